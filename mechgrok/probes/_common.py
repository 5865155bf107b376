"""Helpers shared by the probes (private)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig, RunConfig, TaskConfig
from ..store import Run, Trajectory


def config_for_model(model: nn.Module, task: TaskConfig | None = None) -> RunConfig:
    """A :class:`RunConfig` describing a live mechgrok model (for probes that take a model).

    Modular models default to (a + b) mod p in the input format their family reads; parity models
    need ``task`` (the bit layout cannot be read off the weights).
    """
    cfg = getattr(model, "cfg", None)
    kind = getattr(cfg, "model_kind", None)
    if kind is None:
        raise ValueError(f"probe: expected a mechgrok model or a Trajectory, got {type(model).__name__}")
    names = {name for name, _ in model.named_parameters()}
    model_cfg = ModelConfig(
        kind=kind,
        d_model=cfg.d_model if kind != "cossin_mlp" else 128,
        d_mlp=cfg.d_mlp,
        n_heads=cfg.n_heads or 4,
        d_head=cfg.d_head or 32,
        tied_embed=kind == "mlp" and "unembed.W_U" not in names,
        bias="blocks.0.mlp.b_in" in names,
        n_out=cfg.d_vocab_out if kind == "parity_mlp" else 2,
        frequency=getattr(model, "frequency", 1),
        attn_rate=float(getattr(model, "attn_rate", 1.0)),
        act_fn=cfg.act_fn if kind == "transformer" else "relu",
    )
    if task is None:
        if kind == "parity_mlp":
            raise ValueError("probe: a live parity model needs its task (pass data / the TaskConfig)")
        fmt = (
            "pairs" if kind in ("mlp", "cossin_mlp") or cfg.n_ctx == 2 else ("equals" if cfg.n_ctx == 3 else "sequence")
        )
        task = TaskConfig(kind="modular", p=cfg.p, format=fmt)
    return RunConfig(name="live-model", task=task, model=model_cfg)


def as_trajectory(obj: Trajectory | Run | nn.Module, task: TaskConfig | None = None) -> Trajectory:
    """A :class:`Trajectory` from a trajectory, a run folder's :class:`Run`, or a live model
    (one row, step 0; its weights are copied, the model is not touched)."""
    if isinstance(obj, Trajectory):
        return obj
    if isinstance(obj, Run):
        return obj.trajectory()
    if isinstance(obj, nn.Module):
        config = config_for_model(obj, task)
        params = {k: v.detach().clone()[None] for k, v in obj.state_dict().items()}
        return Trajectory(torch.zeros(1, dtype=torch.int64), params, config)
    raise ValueError(f"probe: expected a Trajectory, Run or mechgrok model, got {type(obj).__name__}")


def first_stable_step(steps: torch.Tensor, cond: torch.Tensor) -> int | None:
    """First step from which ``cond`` holds at that checkpoint and every later one (None if the
    last checkpoint does not satisfy it)."""
    cond = torch.as_tensor(cond, dtype=torch.bool)
    if cond.numel() == 0 or not bool(cond[-1]):
        return None
    bad = torch.nonzero(~cond, as_tuple=False)
    first = int(bad[-1, 0]) + 1 if bad.numel() else 0
    return int(steps[first])


def to_jsonable(value):
    """Plain Python values (ints, floats, lists, dicts) for JSON records."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value
