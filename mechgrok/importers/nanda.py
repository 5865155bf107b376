"""Import runs saved by Nanda et al.'s progress-measures-paper code into mechgrok run folders.

Their files are ``torch.save`` dicts (read here with ``torch.load(..., weights_only=True)``; no
pickle code runs) holding

* ``model``: a state dict of their 1-layer transformer (a final or per-epoch save), and/or
  ``state_dicts`` (their full-run files; ``checkpoints`` is accepted too): a list of such state
  dicts, at ``checkpoint_epochs`` if given, else every ``config['checkpoint_every']`` (100)
  epochs;
* optional ``config`` (a dict: ``p``, ``frac_train``, ``seed``, ``lr``, ``weight_decay``,
  ``num_epochs``, ``checkpoint_every``, ``act_type``, ``use_ln``, ...), ``train_losses`` (every
  epoch), ``test_losses`` (every epoch, or every k epochs when there are 1/k as many), ``epoch``.

Their layouts differ from TransformerLens' and are converted here (and only here):

========================  ===============================  ================================
their key                 their shape                      mechgrok
========================  ===============================  ================================
``embed.W_E``             [d_model, d_vocab]               transposed -> [d_vocab, d_model]
``pos_embed.W_pos``       [n_ctx, d_model]                 as is
``blocks.0.attn.W_Q/K/V`` [n_heads, d_head, d_model]       -> [n_heads, d_model, d_head]
``blocks.0.attn.W_O``     [d_model, n_heads * d_head]      -> [n_heads, d_head, d_model]
``blocks.0.attn.mask``    [n_ctx, n_ctx]                   dropped (mechgrok's causal buffer)
``blocks.0.mlp.W_in``     [d_mlp, d_model]                 -> [d_model, d_mlp]
``blocks.0.mlp.W_out``    [d_model, d_mlp]                 -> [d_mlp, d_model]
``unembed.W_U``           [d_model, p + 1]                 the '=' column (token p) dropped
========================  ===============================  ================================

The imported run folder holds the usual files (config, checkpoints at their epochs, metrics from
their loss curves plus accuracies computed at the checkpoints) and two more: ``import.json``
(where it came from) and ``split.safetensors`` (their exact train/test split, regenerated with
Python's ``random.seed(seed); random.shuffle`` as their ``gen_train_test`` does), which
:func:`run_dataset` uses instead of mechgrok's own split.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig
from ..layout import IMPORT_FILES, RUN_FILES
from ..store import Run, StoreError, atomic_save_tensors, atomic_write_bytes, atomic_write_json
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

__all__ = ["NANDA_FORMAT", "import_nanda_checkpoint", "nanda_split", "nanda_state_to_mechgrok"]

NANDA_FORMAT = "progress-measures-paper"

_REQUIRED = (
    "embed.W_E",
    "pos_embed.W_pos",
    "blocks.0.attn.W_K",
    "blocks.0.attn.W_Q",
    "blocks.0.attn.W_V",
    "blocks.0.attn.W_O",
    "blocks.0.mlp.W_in",
    "blocks.0.mlp.b_in",
    "blocks.0.mlp.W_out",
    "blocks.0.mlp.b_out",
    "unembed.W_U",
)


def _shapes(state: dict[str, torch.Tensor], where: str) -> dict[str, int]:
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise StoreError(f"{where}: not a progress-measures-paper transformer state dict (missing {missing[0]!r})")
    d_model, d_vocab = state["embed.W_E"].shape
    n_heads, d_head, d_model_k = state["blocks.0.attn.W_K"].shape
    d_mlp = state["blocks.0.mlp.W_in"].shape[0]
    n_ctx = state["pos_embed.W_pos"].shape[0]
    expect = {
        "pos_embed.W_pos": (n_ctx, d_model),
        "blocks.0.attn.W_Q": (n_heads, d_head, d_model),
        "blocks.0.attn.W_K": (n_heads, d_head, d_model),
        "blocks.0.attn.W_V": (n_heads, d_head, d_model),
        "blocks.0.attn.W_O": (d_model, n_heads * d_head),
        "blocks.0.mlp.W_in": (d_mlp, d_model),
        "blocks.0.mlp.b_in": (d_mlp,),
        "blocks.0.mlp.W_out": (d_model, d_mlp),
        "blocks.0.mlp.b_out": (d_model,),
        "unembed.W_U": (d_model, d_vocab),
    }
    check_shapes(state, where, expect)
    if n_ctx != 3:
        raise StoreError(f"{where}: pos_embed.W_pos has {n_ctx} positions; only 'a b =' inputs (3) are supported")
    if d_vocab < 3:
        raise StoreError(f"{where}: vocabulary of {d_vocab} tokens is too small for p + 1 with p >= 2")
    return {
        "d_model": d_model,
        "d_vocab": d_vocab,
        "n_heads": n_heads,
        "d_head": d_head,
        "d_mlp": d_mlp,
        "p": d_vocab - 1,
    }


def nanda_state_to_mechgrok(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert one of their state dicts to :class:`~mechgrok.models.OneLayerTransformer`'s."""
    shapes = _shapes(state, "state dict")
    # every token embedded (the p residues and '='); logits beyond p ('=') are ignored
    return one_layer_transformer(state, shapes["p"], shapes["n_heads"], shapes["d_vocab"])


def nanda_split(p: int, frac_train: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Their train / test operand pairs ``[n, 2]`` (``gen_train_test``: all (i, j) in row-major
    order, ``random.seed(seed)``, ``random.shuffle``, the first ``int(frac_train * p^2)`` train)."""
    pairs = [(i, j) for i in range(p) for j in range(p)]
    rng = random.Random(seed)
    rng.shuffle(pairs)
    div = int(frac_train * len(pairs))
    as_t = lambda ps: torch.tensor(ps, dtype=torch.int64).reshape(-1, 2)
    return as_t(pairs[:div]), as_t(pairs[div:])


def _losses(obj: dict[str, Any], key: str, path: Path) -> list[float]:
    values = obj.get(key)
    if values is None:
        return []
    try:
        return [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    except (TypeError, ValueError):
        raise StoreError(f"{path}: {key!r} is not a list of numbers") from None


def import_nanda_checkpoint(
    path: str | Path,
    out: str | Path | None = None,
    *,
    progress: bool = False,
    max_memory_gb: float = 16.0,
    max_disk_gb: float = 64.0,
) -> Run:
    """Import a progress-measures-paper file (module docstring) as a mechgrok run folder.

    ``out`` defaults to ``FILE.mechgrok/`` next to the file. Importing the same file into a folder
    that already holds its import returns that run unchanged; any other existing run there is an
    error (nothing is overwritten).

    The import is written into a temporary sibling folder (``.OUT.import-*``) that is renamed to
    ``out`` as the commit point: a killed import leaves no half-filled ``out`` that would block
    importing the file again, and its temporary folder is removed by the next import.
    ``max_memory_gb`` bounds what the file may unpack to (a small compressed file can expand to
    gigabytes) and the run's estimated memory; ``max_disk_gb`` the converted checkpoints (a
    list can name one stored state dict thousands of times); 0 = no limit.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such checkpoint file")
    out = Path(out) if out is not None else default_import_dir(path)
    digest = file_sha256(path)
    existing = existing_import(out, digest)
    if existing is not None:
        return existing
    obj = _load(path, max_memory_gb)
    cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    states, shapes = _checked_states(obj, cfg, path)
    config, frac, seed = _run_config(path, cfg, shapes, states, max_memory_gb)
    _check_converted_size(path, states, max_disk_gb)
    p = shapes["p"]
    return write_import(
        out, digest, config, lambda run: _write_import(run, obj, cfg, states, path, digest, frac, seed, p)
    )


def _load(path: Path, max_memory_gb: float) -> dict[str, Any]:
    """Their file, read weights-only after checking what it unpacks to."""
    obj = load_weights_only(path, max_memory_gb)
    if not isinstance(obj, dict) or not any(k in obj for k in ("model", "state_dicts", "checkpoints")):
        raise StoreError(f"{path}: not a progress-measures-paper run (expected a dict with a 'model' state dict)")
    return obj


def _checked_states(
    obj: dict[str, Any], cfg: dict[str, Any], path: Path
) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, int]]:
    """``[(epoch, state_dict), ...]`` sorted by epoch, every state checked, and their common shapes."""
    try:
        states = _states(obj, cfg, path)
    except (TypeError, ValueError, OverflowError) as e:  # int() of a hand-made 'epoch' / 'config' value
        raise StoreError(
            f"{path}: unreadable epochs or config ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not states:
        raise StoreError(f"{path}: holds no state dicts")
    for (_, where), s in states:
        _check_state(s, f"{path}: {where}")
    by_epoch = sorted(((epoch, s) for (epoch, _), s in states), key=lambda es: es[0])
    shapes = _shapes(by_epoch[-1][1], str(path))
    for _, s in by_epoch:
        if _shapes(s, str(path)) != shapes:
            raise StoreError(f"{path}: checkpoints disagree on the model's shapes")
    return by_epoch, shapes


def _run_config(
    path: Path, cfg: dict[str, Any], shapes: dict[str, int], states: list[tuple[int, Any]], max_memory_gb: float
) -> tuple[RunConfig, float, int]:
    """The mechgrok config of their run (their model, split and optimiser), its train fraction and seed."""
    p = shapes["p"]
    try:
        if "p" in cfg and int(cfg["p"]) != p:
            raise StoreError(f"{path}: config p={cfg['p']} but the unembedding has {shapes['d_vocab']} columns (p + 1)")
        act = str(cfg.get("act_type", "ReLU"))
        if act.lower() != "relu":
            raise StoreError(f"{path}: act_type {act[:40]!r} is not supported (mechgrok's transformer uses ReLU)")
        if cfg.get("use_ln", False):
            raise StoreError(f"{path}: use_ln=True is not supported (mechgrok's transformer has no LayerNorm)")
        frac = float(cfg.get("frac_train", 0.3))
        seed = int(cfg.get("seed", 0))
        total_steps = max(1, states[-1][0], int(cfg.get("num_epochs", 0) or 0))
        lr, wd = float(cfg.get("lr", 1e-3)), float(cfg.get("weight_decay", 1.0))
        every = max(1, int(cfg.get("checkpoint_every", 100)))
    except (TypeError, ValueError, OverflowError) as e:
        raise StoreError(
            f"{path}: unreadable config value ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    limit = max_memory_gb if max_memory_gb else 0.0
    try:
        config = RunConfig(
            name=run_name("nanda", path),
            task=TaskConfig(
                kind="modular", p=p, op="add", pairs="ordered", format="equals", train_fraction=frac, seed=seed
            ),
            model=ModelConfig(
                kind="transformer",
                d_model=shapes["d_model"],
                n_heads=shapes["n_heads"],
                d_head=shapes["d_head"],
                d_mlp=shapes["d_mlp"],
            ),
            optim=OptimConfig(lr=lr, weight_decay=wd, betas=(0.9, 0.98)),
            # the run's length and cadence are theirs; its folder holds only their checkpoints,
            # whose size is checked below, so the trainer's disk estimate does not apply
            train=TrainConfig(
                steps=total_steps,
                seed=seed,
                checkpoint_every=every,
                log_checkpoints=0,
                max_memory_gb=limit,
                max_disk_gb=0.0,
            ),
        )
    except ConfigError as e:
        raise StoreError(f"{path}: {e}") from None
    return config, frac, seed


def _check_converted_size(path: Path, states: list[tuple[int, Any]], max_disk_gb: float) -> None:
    """Refuse checkpoints that would expand far beyond the tensors the file stores, or past the
    disk limit, before anything is written."""
    n_params = sum(states[-1][1][k].numel() for k in _REQUIRED)
    need = len(states) * n_params * 4
    # what the file really stores: torch.load shares a storage between every reference to it,
    # and a view (a stride-0 expand) can claim more elements than its storage holds
    stored = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for _, s in states
        for t in (s[k] for k in _REQUIRED)
    }
    if need > 4 * sum(stored.values()) + (16 << 20):  # float16 files convert to 2x; real ones never more
        raise StoreError(
            f"{path}: its {len(states):,} checkpoints would expand {sum(stored.values()) / 1e6:,.3g} MB "
            f"of stored tensors to {need / 1e9:,.3g} GB (repeated or overlapping tensors)"
        )
    if max_disk_gb and need > max_disk_gb * 1e9:
        raise StoreError(
            f"{path}: {len(states):,} checkpoints of {n_params:,} parameters would take "
            f"~{need / 1e9:,.3g} GB, over the limit of {max_disk_gb:g} GB"
        )


def _states(obj: dict[str, Any], cfg: dict[str, Any], path: Path) -> list[tuple[tuple[int, str], Any]]:
    """``[((epoch, where), state_dict), ...]`` from their file (``where`` names it in errors)."""
    states: list[tuple[tuple[int, str], Any]] = []
    list_key = "state_dicts" if "state_dicts" in obj else "checkpoints" if "checkpoints" in obj else None
    if list_key is not None:
        ckpts = obj[list_key]
        if not isinstance(ckpts, (list, tuple)) or not all(isinstance(c, dict) for c in ckpts):
            raise StoreError(f"{path}: {list_key!r} is not a list of state dicts")
        epochs = obj.get("checkpoint_epochs")
        if epochs is None:  # their full runs save every config['checkpoint_every'] epochs
            every = int(cfg.get("checkpoint_every", 100))
            epochs = [i * every for i in range(len(ckpts))]
        if isinstance(epochs, torch.Tensor):
            epochs = epochs.tolist()
        if not isinstance(epochs, (list, tuple)) or len(epochs) != len(ckpts):
            raise StoreError(f"{path}: {len(ckpts)} checkpoints but checkpoint_epochs does not list as many")
        states += [((int(e), f"{list_key}[{i}]"), s) for i, (e, s) in enumerate(zip(epochs, ckpts))]
    if "model" in obj:
        if not isinstance(obj["model"], dict):
            raise StoreError(f"{path}: 'model' is not a state dict")
        last = int(obj.get("epoch", cfg.get("num_epochs", states[-1][0][0] + 1 if states else 0)))
        if not states or last > states[-1][0][0]:
            states.append(((last, "'model'"), obj["model"]))
    if len({e for (e, _), _ in states}) != len(states):
        raise StoreError(f"{path}: two checkpoints at the same epoch")
    if any(e < 0 for (e, _), _ in states):
        raise StoreError(f"{path}: negative checkpoint epoch")
    return states


def _check_state(state: dict[Any, Any], where: str) -> None:
    """Every entry a floating-point tensor (a crafted file can hold anything a weights-only load
    allows: ints, strings, nested dicts)."""
    for key in _REQUIRED:
        value = state.get(key)
        if value is None:
            continue  # _shapes reports the missing key
        if not isinstance(value, torch.Tensor):
            raise StoreError(f"{where}: {key!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise StoreError(f"{where}: {key!r} has dtype {value.dtype}, expected floating point")


def _write_import(
    run: Run,
    obj: dict[str, Any],
    cfg: dict[str, Any],
    states: list,
    path: Path,
    digest: str,
    frac: float,
    seed: int,
    p: int,
) -> None:
    out = run.path
    # one converted state at a time: their list may hold hundreds of checkpoints
    for epoch, state in states:
        run.write_checkpoint(epoch, nanda_state_to_mechgrok(state))
    train_ab, test_ab = nanda_split(p, frac, seed)
    atomic_save_tensors(out / IMPORT_FILES["split"], {"train_ab": train_ab, "test_ab": test_ab})
    data = run_dataset(run)
    rows: dict[int, dict[str, Any]] = {}
    train_losses, test_losses = _losses(obj, "train_losses", path), _losses(obj, "test_losses", path)
    # their full runs log the train loss every epoch and the test loss every few epochs
    stride = len(train_losses) // len(test_losses) if test_losses and len(train_losses) % len(test_losses) == 0 else 1
    for losses, column, every in ((train_losses, "train_loss", 1), (test_losses, "test_loss", stride)):
        for i, v in enumerate(losses):
            rows.setdefault(i * every, {"step": i * every})[column] = v
    for epoch, _ in states:
        tr_loss, tr_acc, te_loss, te_acc = split_losses(run.model(epoch), data)
        row = rows.setdefault(epoch, {"step": epoch})
        row.setdefault("train_loss", float(tr_loss))
        row.setdefault("test_loss", float(te_loss))
        row.update(train_acc=float(tr_acc), test_acc=float(te_acc))
    lines = "".join(json.dumps({k: v for k, v in rows[s].items() if v == v}) + "\n" for s in sorted(rows))
    atomic_write_bytes(out / RUN_FILES["metrics"], lines.encode())
    atomic_write_json(
        out / IMPORT_FILES["record"],
        {
            "format": NANDA_FORMAT,
            "source": str(path.resolve()),
            "sha256": digest,
            "epochs": [e for e, _ in states],
            "their_config": plain(cfg),
        },
    )
