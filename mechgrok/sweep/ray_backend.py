"""Ray backend (``pip install 'mechgrok[ray]'``): each Ray task trains a batch of sweep members
with the same batched engine and writes into the same sweep folder, so the workers need a
filesystem shared with the driver (any single machine; NFS or similar on a cluster).

Tasks are independent: a killed task leaves its members' batch resume state in ``SWEEP/state``
and re-running the sweep (with either backend) continues them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..store import FILES, StoreError

__all__ = ["run_on_ray", "split_for_tasks"]


def split_for_tasks(groups: list[list[int]], tasks: int, max_batch: int) -> list[list[int]]:
    """Cut each group into chunks (one Ray task each): about ``tasks`` chunks over all groups,
    in proportion to group size, none larger than ``max_batch``."""
    total = sum(len(g) for g in groups)
    chunks = []
    for g in groups:
        k = max(math.ceil(len(g) / max_batch), round(tasks * len(g) / max(total, 1)), 1)
        k = min(k, len(g))
        size = math.ceil(len(g) / k)
        chunks.extend(g[i : i + size] for i in range(0, len(g), size))
    return chunks


def run_on_ray(
    sweep,
    groups: list[list[int]],
    task: Callable[[str, list[int], dict[str, Any], int], int],
    *,
    address: str | None = None,
    tasks: int | None = None,
    cpus_per_task: int = 1,
    progress: bool = True,
) -> None:
    """Train the pending ``groups`` of ``sweep`` as Ray tasks (connecting to ``address`` or
    starting a local Ray instance unless one is already initialised in this process).

    ``task(sweep_path, member_indices, engine_dict, threads)`` is the body of one Ray task
    (:func:`.store.train_chunk_task`); it is passed in so this module does not import the sweep
    store, which imports it. It must be a module-level function (Ray ships it by reference)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("backend 'ray': Ray is not installed; pip install 'mechgrok[ray]'") from None
    from tqdm.auto import tqdm

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n_tasks = tasks or max(1, cpus // cpus_per_task)
        chunks = split_for_tasks(groups, n_tasks, sweep.engine.max_batch)
        remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(task)
        engine = sweep.engine.to_dict()
        futures = {
            remote.remote(str(Path(sweep.path).resolve()), chunk, engine, cpus_per_task): chunk for chunk in chunks
        }
        pending_members = [i for g in groups for i in g]
        bar = tqdm(
            total=len(pending_members),
            disable=not progress,
            desc=f"sweep {sweep.path.name} on ray ({len(chunks)} tasks)",
            unit="model",
            mininterval=0.5,
            leave=False,
        )
        waiting = list(futures)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=1.0)
                for ref in ready:
                    try:
                        ray.get(ref)
                    except Exception as e:
                        cause = getattr(e, "cause", None) or e
                        msg = str(cause).strip().splitlines()
                        raise StoreError(f"ray task failed: {msg[-1] if msg else type(cause).__name__}") from None
                done = sum((sweep.member_path(i) / FILES["summary"]).exists() for i in pending_members)
                bar.update(done - bar.n)
                if waiting:
                    time.sleep(0.2)
        finally:
            bar.close()
            for ref in waiting:
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()
