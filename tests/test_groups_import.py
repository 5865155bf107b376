"""Chughtai et al.'s saved group MLPs: files written here in their format (their OneLayerMLP state
dict + cfg.json, elements in their utils/groups.py order: sympy's for S_n), imported, checked on
the whole table, and analysed (`mechgrok analyze model.pt --config cfg.json`)."""

from __future__ import annotations

import json

import pytest
import torch

from mechgrok import StoreError
from mechgrok.analysis import analyze
from mechgrok.cli import main
from mechgrok.config import ConfigError
from mechgrok.groups import finite_group
from mechgrok.importers import import_chughtai_checkpoint, match_group_table
from mechgrok.importers.chughtai import chughtai_element_map
from mechgrok.probes.irreps import key_irreps

sympy = pytest.importorskip("sympy")
from sympy.combinatorics.named_groups import AlternatingGroup, SymmetricGroup  # noqa: E402 (after importorskip)


def their_table(name: str, n: int) -> torch.Tensor:
    """Their Cayley table, written from their utils/groups.py: sympy's element list and product
    (``compose(x, y) = idx(perm(x) * perm(y))``) for S_n / A_n; r + n s for D_n."""
    if name in ("SymmetricGroup", "AlternatingGroup"):
        els = list((SymmetricGroup if name == "SymmetricGroup" else AlternatingGroup)(n).generate())
        idx = {tuple(p.array_form): i for i, p in enumerate(els)}
        return torch.tensor([[idx[tuple((p * q).array_form)] for q in els] for p in els])

    def compose(x, y):
        (xr, xs), (yr, ys) = (x % n, x // n), (y % n, y // n)
        return ((xr + yr) % n + n * ys) if xs == 0 else ((xr - yr) % n + n * ((1 + ys) % 2))

    return torch.tensor([[compose(x, y) for y in range(2 * n)] for x in range(2 * n)])


def write_their_run(folder, name: str, n: int, spec: str, irreps: list[str], ours: torch.Tensor, scale: float = 1.0):
    """A OneLayerMLP in their labels whose logits carry only ``irreps`` (a lookup construction:
    their model has no biases, so a constant embedding column supplies the -1)."""
    T = their_table(name, n)
    G = T.shape[0]
    by_name = {r.name: r for r in finite_group(spec).irreps()}
    f = sum(by_name[r].dim * torch.einsum("zij,cij->zc", by_name[r].matrices, by_name[r].matrices) for r in irreps)
    e = G + 1
    W_x = torch.zeros(G, e)
    W_x[:, :G] = torch.eye(G)
    W_x[:, G] = 1.0
    W_y = torch.zeros(G, e)
    W_y[:, :G] = torch.eye(G)
    x, y = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    x, y = x.flatten(), y.flatten()
    W = torch.zeros(2 * e, G * G)
    W[x, torch.arange(G * G)] = 1.0
    W[e + y, torch.arange(G * G)] = 1.0
    W[G] = -1.0
    W_U = scale * f[ours[T[x, y]]][:, ours].float()  # their output c reads ours(c)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"W_x": W_x, "W_y": W_y, "W": W, "W_U": W_U}, folder / "model.pt")
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "model": "OneLayerMLP",
                "group": name,
                "group_parameter": n,
                "layers": {"embed_dim": e, "hidden_dim": G * G},
                "frac_train": 0.4,
            }
        )
    )
    return folder / "model.pt", folder / "cfg.json"


@pytest.mark.parametrize(
    "name, n, spec",
    [
        ("SymmetricGroup", 4, "s4"),
        ("SymmetricGroup", 3, "s3"),
        ("AlternatingGroup", 4, "a4"),
        ("DihedralGroup", 5, "d5"),
    ],
)
def test_their_element_order_maps_onto_ours(name, n, spec):
    T, g = their_table(name, n), finite_group(spec)
    ours = chughtai_element_map(spec)
    assert sorted(ours.tolist()) == list(range(g.order))
    assert torch.equal(ours[T], g.table[ours[:, None], ours[None, :]])  # a homomorphism
    # the fallback without sympy: an isomorphism recovered from the table alone (randomly relabelled)
    perm = torch.randperm(g.order)
    relabelled = torch.empty_like(T)
    relabelled[perm[:, None], perm[None, :]] = perm[T]
    m = match_group_table(relabelled, g)
    assert m is not None and torch.equal(m[relabelled], g.table[m[:, None], m[None, :]])
    assert match_group_table(torch.zeros(g.order, g.order, dtype=torch.int64), g) is None


@pytest.mark.parametrize(
    "name, n, spec, planted", [("SymmetricGroup", 4, "s4", ["(3,1)"]), ("DihedralGroup", 5, "d5", ["rot 1"])]
)
def test_import_checks_the_table_and_finds_the_key_irreps(tmp_path, name, n, spec, planted):
    ours = chughtai_element_map(spec)
    model_pt, cfg = write_their_run(tmp_path / f"{spec}_MLP_seed0", name, n, spec, planted, ours)
    run = import_chughtai_checkpoint(model_pt, cfg)
    record = json.loads((run.path / "import.json").read_text())
    assert record["table_accuracy"] == 1.0 and record["group"] == spec
    assert run.config.task.group == spec and run.config.task.train_fraction == 0.4
    assert key_irreps(run.trajectory()) == planted
    # re-import: the same run
    assert import_chughtai_checkpoint(model_pt, cfg).path == run.path
    # the converted model is theirs exactly: logits on every pair, in our labels
    st = torch.load(model_pt, weights_only=True)
    T = their_table(name, n)
    G = T.shape[0]
    x, y = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    theirs = torch.relu(torch.cat([st["W_x"][x.flatten()], st["W_y"][y.flatten()]], -1) @ st["W"]) @ st["W_U"]
    model = run.model(1)
    mine = model(torch.stack([ours[x.flatten()], ours[y.flatten()] + G], -1))
    assert torch.allclose(mine[:, ours].float(), theirs, atol=1e-5)


def test_cli_analyze_prints_key_irreps(tmp_path, capsys):
    ours = chughtai_element_map("s4")
    model_pt, cfg = write_their_run(tmp_path / "S4_MLP_seed1", "SymmetricGroup", 4, "s4", ["(2,2)", "(2,1,1)"], ours)
    main(["analyze", str(model_pt), "--config", str(cfg), "--quiet"])
    out = capsys.readouterr().out
    assert "key irreps: (2,2) (dim 2), (2,1,1) (dim 3)" in out
    assert "accuracy on the whole table: 1.0000" in out
    res = analyze(tmp_path / "S4_MLP_seed1" / "model.mechgrok", progress=False)
    assert [k["name"] for k in res.records["key_irreps"]] == ["(2,2)", "(2,1,1)"]


def test_bad_their_files_get_one_line_errors(tmp_path):
    ours = chughtai_element_map("d5")
    model_pt, cfg = write_their_run(tmp_path / "D5", "DihedralGroup", 5, "d5", ["rot 1"], ours)
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"group": "SymmetricGroup", "group_parameter": 9}))
    with pytest.raises(ConfigError, match="group_parameter") as info:
        import_chughtai_checkpoint(model_pt, bad_cfg)
    assert "\n" not in str(info.value)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"group": "SymmetricGroup", "group_parameter": 4}))
    with pytest.raises(StoreError, match="W_x has 10 rows"):
        import_chughtai_checkpoint(model_pt, wrong, tmp_path / "out1")
    st = torch.load(model_pt, weights_only=True)
    del st["W"]
    torch.save(st, tmp_path / "noW.pt")
    with pytest.raises(StoreError, match="not a OneLayerMLP state dict"):
        import_chughtai_checkpoint(tmp_path / "noW.pt", cfg, tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_their_split_is_rebuilt(tmp_path):
    """get_all_data(seed): rows x * order + y, torch.manual_seed(seed); randperm when seed is truthy."""
    from mechgrok.importers._common import run_dataset
    from mechgrok.importers.chughtai import chughtai_split

    ours = chughtai_element_map("s3")
    G = 6
    x, y = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    data = torch.stack([x.flatten(), y.flatten()], -1)
    torch.manual_seed(7)  # their code, literally
    shuffled = data[torch.randperm(G * G)]
    train, test = chughtai_split(G, 0.4, 7, ours)
    assert torch.equal(train, ours[shuffled[: int(0.4 * 36)]]) and torch.equal(test, ours[shuffled[int(0.4 * 36) :]])
    train0, _ = chughtai_split(G, 0.5, 0, ours)  # seed 0 is falsy: no shuffle
    assert torch.equal(train0, ours[data[:18]])
    model_pt, cfg = write_their_run(tmp_path / "S3", "SymmetricGroup", 3, "s3", ["(2,1)"], ours)
    meta = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**meta, "seed": 7}))
    run = import_chughtai_checkpoint(model_pt, cfg)
    ds = run_dataset(run)
    assert torch.equal(ds.train_ab, train) and torch.equal(
        ds.train_y, finite_group("s3").table[train[:, 0], train[:, 1]]
    )
