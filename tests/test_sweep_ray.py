"""The Ray backend against a real local Ray cluster started by the test (skipped without Ray)."""

import os

import pytest
import torch

# before Ray is imported: bind to 127.0.0.1, no usage reporting
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray")

from mechgrok import train  # noqa: E402
from mechgrok.sweep import EngineConfig, SweepSpec, run_sweep  # noqa: E402
from mechgrok.sweep.ray_backend import split_for_tasks  # noqa: E402

pytestmark = pytest.mark.integration  # a real local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}},
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_split_for_tasks():
    assert split_for_tasks([list(range(10))], 2, 1024) == [list(range(5)), list(range(5, 10))]
    assert split_for_tasks([list(range(10))], 2, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    chunks = split_for_tasks([[0, 1, 2, 3], [4, 5]], 2, 1024)
    assert sorted(i for c in chunks for i in c) == list(range(6)) and all(len(c) > 0 for c in chunks)


def test_ray_backend_writes_the_same_sweep_folder(ray_cluster, tiny_parity, tmp_path):
    base = tiny_parity.with_overrides({"train.steps": 80, "train.eval_every": 5})
    spec = SweepSpec.from_cli(base, ["weight_decay=0.1,1", "d_mlp=8,16"], seeds=2)
    on_ray = run_sweep(spec, tmp_path / "ray", engine=EngineConfig(log_every=5), backend="ray", progress=False)
    local = run_sweep(spec, tmp_path / "local", engine=EngineConfig(log_every=5), progress=False)
    assert sorted(on_ray.finished()) == list(range(8))
    a, b = on_ray.results(), local.results()
    assert list(a.columns) == list(b.columns) and list(a["phase"]) == list(b["phase"])
    for i in (0, 5):
        got = on_ray.run(i).model().state_dict()
        for k, v in local.run(i).model().state_dict().items():
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5)
    ref = train(spec.config(5), progress=False)
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(on_ray.run(5).model().state_dict()[k], v, rtol=1e-4, atol=1e-5)
