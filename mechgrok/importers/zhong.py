"""Import models saved by Zhong et al.'s "The Clock and the Pizza" code into mechgrok run folders.

Their ``code/train-main.py`` saves ``torch.save(model.state_dict())`` as ``model_<id>.pt`` and
the run's settings as ``config_<id>.json`` beside it (``C``, ``n_layers``, ``d_model``,
``n_heads``, ``act_fn``, ``attn_coeff``, ``frac``, ``weight_decay``, ``lr``, ``epoch``,
``diff_vocab``, ``eqn_sign``, ...). The state dict follows Nanda et al.'s layout, converted here
(and only here) to TransformerLens':

========================  ===============================  ================================
their key                 their shape                      mechgrok
========================  ===============================  ================================
``embed.W_E``             [d_model, vocab]                 first p columns, transposed
``pos_embed.W_pos``       [n_ctx, d_model]                 as is
``blocks.0.attn.W_Q/K/V`` [n_heads, d_head, d_model]       -> [n_heads, d_model, d_head]
``blocks.0.attn.W_O``     [d_model, n_heads * d_head]      -> [n_heads, d_head, d_model]
``blocks.0.attn.mask``    [n_ctx, n_ctx]                   dropped (they never apply it)
``blocks.0.mlp.W_in``     [d_mlp, d_model]                 -> [d_model, d_mlp]
``blocks.0.mlp.W_out``    [d_model, d_mlp]                 -> [d_mlp, d_model]
``unembed.W_U``           [d_model, vocab]                 first p columns
========================  ===============================  ================================

``attn_coeff`` becomes ``model.attn_rate`` and ``act_fn`` (ReLU / GeLU) ``model.act_fn``; inputs
``a b`` (``eqn_sign`` 0) become ``task.format = "pairs"``, ``a b =`` (``eqn_sign`` 1, '=' is token
p as in mechgrok's vocabulary) ``"equals"``. Refused with a one-line error: more than one layer,
another activation, ``diff_vocab`` (b as token p + b: mechgrok's transformer shares one vocabulary).
Their split is torch's unseeded ``random_split``, which cannot be regenerated: the imported run
uses mechgrok's split of ``frac`` (its train/test accuracies are of that split; the signatures
and the all-pairs accuracy do not depend on it). Their logits over tokens >= p ('=' or the
second vocabulary) are dropped: the answer is read over the p residues.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..config import (
    ConfigError,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    load_json_text,
)
from ..layout import IMPORT_FILES, RUN_FILES
from ..store import Run, StoreError, atomic_write_bytes, atomic_write_json
from ._common import (
    check_shapes,
    default_import_dir,
    existing_import,
    file_sha256,
    load_weights_only,
    one_layer_transformer,
    plain,
    run_dataset,
    run_name,
    split_losses,
    write_import,
)

__all__ = ["ZHONG_FORMAT", "import_zhong_checkpoint", "zhong_state_to_mechgrok"]

ZHONG_FORMAT = "clock-and-pizza"

_REQUIRED = (
    "embed.W_E",
    "pos_embed.W_pos",
    "unembed.W_U",
    "blocks.0.attn.W_K",
    "blocks.0.attn.W_Q",
    "blocks.0.attn.W_V",
    "blocks.0.attn.W_O",
    "blocks.0.mlp.W_in",
    "blocks.0.mlp.b_in",
    "blocks.0.mlp.W_out",
    "blocks.0.mlp.b_out",
)
_ACTS = {"relu": "relu", "gelu": "gelu"}


def _shapes(state: dict[str, Any], where: str, p: int, n_ctx: int) -> dict[str, int]:
    """Their shapes, checked against each other and against the config's p and input length."""
    for key in _REQUIRED:
        value = state.get(key)
        if value is None:
            raise StoreError(f"{where}: not a clock-and-pizza transformer state dict (missing {key!r})")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise StoreError(f"{where}: {key!r} is not a floating-point tensor")
    extra = sorted(k for k in state if k.startswith("blocks.") and not k.startswith("blocks.0."))
    if extra:
        raise StoreError(f"{where}: holds {extra[0]!r}: only one-layer models are supported")
    if state["embed.W_E"].ndim != 2 or state["blocks.0.attn.W_K"].ndim != 3:
        raise StoreError(f"{where}: embed.W_E / blocks.0.attn.W_K have the wrong number of dimensions")
    d_model, vocab = state["embed.W_E"].shape
    n_heads, d_head, _ = state["blocks.0.attn.W_K"].shape
    d_mlp = state["blocks.0.mlp.W_in"].shape[0]
    expect = {
        "pos_embed.W_pos": (n_ctx, d_model),
        "unembed.W_U": (d_model, vocab),
        "blocks.0.attn.W_Q": (n_heads, d_head, d_model),
        "blocks.0.attn.W_K": (n_heads, d_head, d_model),
        "blocks.0.attn.W_V": (n_heads, d_head, d_model),
        "blocks.0.attn.W_O": (d_model, n_heads * d_head),
        "blocks.0.mlp.W_in": (d_mlp, d_model),
        "blocks.0.mlp.b_in": (d_mlp,),
        "blocks.0.mlp.W_out": (d_model, d_mlp),
        "blocks.0.mlp.b_out": (d_model,),
    }
    check_shapes(state, where, expect)
    if vocab < p + (n_ctx == 3):
        raise StoreError(f"{where}: embed.W_E has {vocab} tokens, fewer than the config's C={p} (+ '=')")
    return {"d_model": d_model, "n_heads": n_heads, "d_head": d_head, "d_mlp": d_mlp}


def zhong_state_to_mechgrok(state: dict[str, torch.Tensor], p: int, n_heads: int) -> dict[str, torch.Tensor]:
    """Their state dict as :class:`~mechgrok.models.OneLayerTransformer`'s (module docstring)."""
    n_tokens = p + 1 if state["pos_embed.W_pos"].shape[0] == 3 else p  # '=' is token p
    return one_layer_transformer(state, p, n_heads, n_tokens)


def _read_config(config_path: Path) -> dict[str, Any]:
    if not config_path.is_file():
        raise StoreError(f"{config_path}: no such config file")
    try:
        cfg = load_json_text(config_path.read_bytes(), str(config_path))
    except ConfigError as e:
        raise StoreError(str(e)) from None
    if not isinstance(cfg, dict):
        raise StoreError(f"{config_path}: expected a JSON object (their config_<id>.json)")
    return cfg


def _run_config(
    path: Path, config_path: Path, cfg: dict[str, Any], state: dict[str, Any], max_memory_gb: float
) -> tuple[RunConfig, int]:
    """The mechgrok config of their run and the step of its one checkpoint."""
    where = str(config_path)
    try:
        if "C" not in cfg:
            raise StoreError(f"{where}: no 'C' (the modulus)")
        p = int(cfg["C"])
        if int(cfg.get("n_layers", 1)) != 1:
            raise StoreError(f"{where}: n_layers={cfg['n_layers']}; only one-layer models are supported")
        act = str(cfg.get("act_fn", "ReLU"))
        if act.lower() not in _ACTS:
            raise StoreError(f"{where}: act_fn {act[:40]!r} is not supported (ReLU or GeLU)")
        if int(cfg.get("diff_vocab", 0)):
            raise StoreError(
                f"{where}: diff_vocab=1 (b as token C + b) is not supported; mechgrok's transformer "
                "reads both operands from one vocabulary"
            )
        eqn = bool(int(cfg.get("eqn_sign", 0)))
        funcs = str(cfg.get("funcs", f"lambda x: (x[0]+x[1])%{p}")).replace(" ", "")
        if funcs != f"lambdax:(x[0]+x[1])%{p}":
            raise StoreError(f"{where}: funcs {funcs[:60]!r} is not (a + b) mod C")
        attn = float(cfg.get("attn_coeff", 1.0))
        frac = float(cfg.get("frac", 0.8))
        lr, wd = float(cfg.get("lr", 1e-3)), float(cfg.get("weight_decay", 1e-4))
        steps = max(1, int(cfg.get("epoch", 10_000)))
    except (TypeError, ValueError, OverflowError) as e:
        raise StoreError(
            f"{where}: unreadable config value ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if p < 2:
        raise StoreError(f"{where}: C={p} must be >= 2")
    shapes = _shapes(state, str(path), p, 3 if eqn else 2)
    if "d_model" in cfg and int(cfg["d_model"]) != shapes["d_model"]:
        raise StoreError(f"{where}: d_model={cfg['d_model']} but the weights have width {shapes['d_model']}")
    try:
        config = RunConfig(
            name=run_name("zhong", path),
            task=TaskConfig(
                kind="modular", p=p, op="add", pairs="ordered", format="equals" if eqn else "pairs", train_fraction=frac
            ),
            model=ModelConfig(
                kind="transformer",
                d_model=shapes["d_model"],
                n_heads=shapes["n_heads"],
                d_head=shapes["d_head"],
                d_mlp=shapes["d_mlp"],
                attn_rate=attn,
                act_fn=_ACTS[act.lower()],
            ),
            optim=OptimConfig(lr=lr, weight_decay=wd, betas=(0.9, 0.98), warmup_steps=10),
            train=TrainConfig(
                steps=steps, checkpoint_every=steps, log_checkpoints=0, max_memory_gb=max_memory_gb, max_disk_gb=0.0
            ),
        )
    except ConfigError as e:
        raise StoreError(f"{where}: {e}") from None
    return config, steps


def import_zhong_checkpoint(
    path: str | Path, config: str | Path, out: str | Path | None = None, *, max_memory_gb: float = 16.0
) -> Run:
    """Import a clock-and-pizza ``model_<id>.pt`` with its ``config_<id>.json`` (module docstring)
    as a mechgrok run folder with one checkpoint, at step ``epoch`` (their run's length).

    ``out`` defaults to ``FILE.mechgrok/`` next to the file; importing the same pair into the
    folder that holds its import returns that run unchanged, and nothing existing is overwritten.
    The file is read with ``torch.load(..., weights_only=True)`` after checking what it unpacks to
    (``max_memory_gb``; 0 = no limit).
    """
    path, config_path = Path(path), Path(config)
    if not path.is_file():
        raise StoreError(f"{path}: no such checkpoint file")
    cfg = _read_config(config_path)
    out = Path(out) if out is not None else default_import_dir(path)
    # the import is of the pair: the same weights with another config are another run
    digest = file_sha256(path) + "+" + file_sha256(config_path)
    existing = existing_import(out, digest)
    if existing is not None:
        return existing
    state = load_weights_only(path, max_memory_gb)
    if not isinstance(state, dict):
        raise StoreError(f"{path}: not a state dict (their torch.save(model.state_dict()))")
    run_config, step = _run_config(path, config_path, cfg, state, max_memory_gb)
    converted = zhong_state_to_mechgrok(state, run_config.task.p, run_config.model.n_heads)
    return write_import(
        out, digest, run_config, lambda run: _write_import(run, converted, step, path, config_path, digest, cfg)
    )


def _write_import(
    run: Run,
    converted: dict[str, torch.Tensor],
    step: int,
    path: Path,
    config_path: Path,
    digest: str,
    cfg: dict[str, Any],
) -> None:
    run.write_checkpoint(step, converted)
    data = run_dataset(run)
    tr_loss, tr_acc, te_loss, te_acc = split_losses(run.model(step), data)
    row = {
        "step": step,
        "train_loss": float(tr_loss),
        "test_loss": float(te_loss),
        "train_acc": float(tr_acc),
        "test_acc": float(te_acc),
    }
    atomic_write_bytes(
        run.path / RUN_FILES["metrics"],
        (json.dumps({k: v for k, v in row.items() if not math.isnan(v)}) + "\n").encode(),
    )
    atomic_write_json(
        run.path / IMPORT_FILES["record"],
        {
            "format": ZHONG_FORMAT,
            "source": str(path.resolve()),
            "config_source": str(config_path.resolve()),
            "sha256": digest,
            "epochs": [step],
            "their_config": plain(cfg),
        },
    )
