"""Import Chughtai et al.'s ("A Toy Model of Universality", 2023) group MLPs into run folders.

Their runs (``rep_theory/batch_experiments/<G>_MLP_seed<k>/``) hold ``model.pt``, a state dict of
their ``OneLayerMLP`` (read with ``torch.load(..., weights_only=True)``), and ``cfg.json``, e.g.
``{"model": "OneLayerMLP", "group": "SymmetricGroup", "group_parameter": 5, "layers":
{"embed_dim": 256, "hidden_dim": 128}, "frac_train": 0.4, ...}``. Their model:

    logits = ReLU(concat(W_x[x], W_y[y]) @ W) @ W_U
    W_x, W_y [order, embed]   W [2 embed, hidden]   W_U [hidden, order]

(some versions name the embeddings ``W_E_a`` / ``W_E_b``; both are read). mechgrok's group MLP
(:mod:`mechgrok.tasks`: token b is p + b) holds the same function exactly, with ``d_model =
max(2 embed, hidden)``:

========================  =====================================================
theirs                    mechgrok
========================  =====================================================
``W_x[x]``                ``embed.W_E[a]``     = [W_x[x], 0]  (a = ours of x)
``W_y[y]``                ``embed.W_E[p + b]`` = [0, W_y[y]]
``W``                     ``blocks.0.mlp.W_in`` (rows padded to d_model)
(none)                    ``blocks.0.mlp.W_out`` = [I_hidden | 0]
``W_U[:, z]``             ``unembed.W_U[:hidden, ours of z]``
========================  =====================================================

Element order. Theirs follows their ``utils/groups.py``: ``CyclicGroup`` j; ``DihedralGroup``
r + n s with the product mechgrok's ``d<n>`` uses (the same order); ``SymmetricGroup`` /
``AlternatingGroup`` sympy's element list (``list(G.generate())``) with sympy's product
``p * q`` = "p, then q". Their element x is mechgrok's permutation ``perm(x)^-1`` (the inverse
turns sympy's left-to-right product into mechgrok's right-to-left one), rebuilt with sympy. When
sympy is missing the map is recovered from the model itself: its predictions on the whole table
must form a group table, matched to mechgrok's by an isomorphism found from two generators (for
S_n, n <= 5, every automorphism is inner, so the irreps are unchanged by the choice).

The import checks the model's accuracy on the whole table (in ``import.json`` and the metrics of
its single checkpoint) and writes their train/test split (``split.safetensors``), rebuilt as their
``get_all_data(seed)`` draws it: rows x * order + y, shuffled by ``torch.manual_seed(seed);
torch.randperm(order^2)`` when ``seed`` is truthy (in order otherwise), the first
``int(frac_train * order^2)`` for training; ``cfg.json``'s ``seed`` (default 0) is taken as theirs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig, load_json_text
from ..groups import FiniteGroup, finite_group
from ..layout import IMPORT_FILES, RUN_FILES
from ..metrics import loss_and_accuracy
from ..store import Run, StoreError, atomic_save_tensors, atomic_write_bytes, atomic_write_json
from ._common import (
    default_import_dir,
    existing_import,
    file_sha256,
    load_weights_only,
    plain,
    run_dataset,
    write_import,
)

__all__ = [
    "CHUGHTAI_FORMAT",
    "chughtai_element_map",
    "chughtai_group_spec",
    "chughtai_split",
    "chughtai_state_to_mechgrok",
    "import_chughtai_checkpoint",
    "is_chughtai_config",
    "match_group_table",
]

CHUGHTAI_FORMAT = "toy-model-of-universality"

_GROUPS = {"CyclicGroup": "c", "DihedralGroup": "d", "SymmetricGroup": "s", "AlternatingGroup": "a"}


def is_chughtai_config(path: str | Path) -> bool:
    """Whether ``path`` is a Chughtai et al. ``cfg.json`` (a JSON object naming one of their groups)."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("group") in _GROUPS


def chughtai_group_spec(cfg: dict[str, Any]) -> str:
    """Their ``group`` / ``group_parameter`` as a mechgrok group spec (``SymmetricGroup``, 5 -> ``s5``)."""
    name, n = cfg.get("group"), cfg.get("group_parameter")
    if name not in _GROUPS:
        raise ConfigError(f"cfg.json: group {name!r} is not one of {', '.join(_GROUPS)}")
    if isinstance(n, bool) or not isinstance(n, int):
        raise ConfigError(f"cfg.json: group_parameter must be an integer, got {n!r}")
    spec = f"{_GROUPS[name]}{n}"
    try:
        finite_group(spec)
    except ValueError as e:
        raise ConfigError(f"cfg.json: group_parameter: {e}") from None
    return spec


def _sympy_elements(spec: str) -> list[tuple[int, ...]] | None:
    """Their permutations (array forms, sympy's order), or None without sympy."""
    try:
        from sympy.combinatorics.named_groups import AlternatingGroup, SymmetricGroup
    except ImportError:  # pragma: no cover - sympy comes with torch
        return None
    n = int(spec[1:])
    G = SymmetricGroup(n) if spec[0] == "s" else AlternatingGroup(n)
    return [tuple(g.array_form) for g in G.generate()]


def chughtai_element_map(spec: str) -> torch.Tensor | None:
    """``ours[x]``: mechgrok's index of their element x (None for S_n / A_n without sympy)."""
    group = finite_group(spec)
    if spec[0] in "cd":
        return torch.arange(group.order)
    perms = _sympy_elements(spec)
    if perms is None:
        return None
    index = {g: i for i, g in enumerate(group.elements)}

    def inverse(q: tuple[int, ...]) -> tuple[int, ...]:
        out = [0] * len(q)
        for i, v in enumerate(q):
            out[v] = i
        return tuple(out)

    return torch.tensor([index[inverse(q)] for q in perms])


def match_group_table(table: torch.Tensor, group: FiniteGroup) -> torch.Tensor | None:
    """An isomorphism from a Cayley table ``table [n, n]`` (their labels) onto ``group``:
    ``ours[x]`` with ``ours[table[x, y]] = group.table[ours[x], ours[y]]``; None if there is none.

    Two generators of ``group`` are mapped to every pair of their elements of the same orders and
    the map is extended along words; the first consistent bijection is returned.
    """
    n = group.order
    if table.shape != (n, n):
        return None
    T, mine = table.long(), group.table

    def orders(t: torch.Tensor, e: int) -> list[int]:
        out = []
        for g in range(n):
            k, h = 1, g
            while h != e and k <= n:
                h, k = int(t[h, g]), k + 1
            out.append(k)
        return out

    their_e = [x for x in range(n) if torch.equal(T[x], torch.arange(n))]
    if len(their_e) != 1:
        return None
    e_t, e_m = their_e[0], group.identity
    ord_t, ord_m = orders(T, e_t), orders(mine, e_m)
    gens = _generators(group, ord_m)
    cands = [[x for x in range(n) if ord_t[x] == ord_m[g]] for g in gens]
    for x1 in cands[0]:
        for x2 in cands[1] if len(gens) > 1 else [None]:
            images = {gens[0]: x1} if x2 is None else {gens[0]: x1, gens[1]: x2}
            phi = _extend_map(T, mine, e_t, e_m, images)
            if phi is not None:
                ours = torch.empty(n, dtype=torch.int64)
                ours[phi] = torch.arange(n)
                return ours
    return None


def _generators(group: FiniteGroup, order: list[int]) -> list[int]:
    """One or two elements generating ``group`` (of the highest orders found)."""
    n = group.order
    by_order = sorted(range(n), key=lambda g: -order[g])
    if order[by_order[0]] == n:
        return [by_order[0]]
    for g1 in by_order:
        for g2 in range(n):
            if len(_closure(group.table, [g1, g2], group.identity)) == n:
                return [g1, g2]
    raise ValueError(f"{group.name}: not generated by two elements")  # pragma: no cover


def _closure(table: torch.Tensor, gens: list[int], e: int) -> set[int]:
    seen, frontier = {e}, [e]
    while frontier:
        nxt = []
        for g in frontier:
            for s in gens:
                h = int(table[g, s])
                if h not in seen:
                    seen.add(h)
                    nxt.append(h)
        frontier = nxt
    return seen


def _extend_map(T: torch.Tensor, mine: torch.Tensor, e_t: int, e_m: int, images: dict[int, int]) -> torch.Tensor | None:
    """``phi[ours] = theirs`` extending generator images along words, if it is an isomorphism."""
    n = mine.shape[0]
    phi = torch.full((n,), -1, dtype=torch.int64)
    phi[e_m] = e_t
    frontier = [e_m]
    while frontier:
        nxt = []
        for g in frontier:
            for s, x in images.items():
                h = int(mine[g, s])
                img = int(T[phi[g], x])
                if phi[h] < 0:
                    phi[h] = img
                    nxt.append(h)
                elif int(phi[h]) != img:
                    return None
        frontier = nxt
    if bool((phi < 0).any()) or len(set(phi.tolist())) != n:
        return None
    return phi if torch.equal(phi[mine], T[phi[:, None], phi[None, :]]) else None


def _their_weights(state: dict[str, Any], where: str) -> tuple[torch.Tensor, ...]:
    names = (("W_x", "W_E_a"), ("W_y", "W_E_b"), ("W",), ("W_U",))
    out = []
    for options in names:
        key = next((k for k in options if k in state), None)
        if key is None:
            raise StoreError(f"{where}: not a OneLayerMLP state dict (no {' / '.join(options)})")
        value = state[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim != 2:
            raise StoreError(f"{where}: {key!r} is not a 2-D floating-point tensor")
        out.append(value.detach().double())
    W_x, W_y, W, W_U = out
    order, e = W_x.shape
    if W_y.shape != (order, e) or W.shape[0] != 2 * e or W_U.shape != (W.shape[1], order):
        raise StoreError(
            f"{where}: shapes W_x {list(W_x.shape)}, W_y {list(W_y.shape)}, W {list(W.shape)}, "
            f"W_U {list(W_U.shape)} are not OneLayerMLP's [n, e], [n, e], [2e, h], [h, n]"
        )
    return W_x, W_y, W, W_U


def chughtai_state_to_mechgrok(
    state: dict[str, Any], ours: torch.Tensor, where: str = "model.pt"
) -> dict[str, torch.Tensor]:
    """Their ``OneLayerMLP`` state dict -> mechgrok group-MLP parameters (module docstring);
    ``ours[x]`` = mechgrok's index of their element x."""
    W_x, W_y, W, W_U = _their_weights(state, where)
    order, e = W_x.shape
    h = W.shape[1]
    d = max(2 * e, h)
    W_E = torch.zeros(2 * order, d, dtype=torch.float64)
    W_E[ours, :e] = W_x
    W_E[order + ours, e : 2 * e] = W_y
    W_in = torch.zeros(d, h, dtype=torch.float64)
    W_in[: 2 * e] = W
    W_out = torch.zeros(h, d, dtype=torch.float64)
    W_out[:, :h] = torch.eye(h, dtype=torch.float64)
    W_U_ours = torch.zeros(d, order, dtype=torch.float64)
    W_U_ours[:h, ours] = W_U
    return {"embed.W_E": W_E, "blocks.0.mlp.W_in": W_in, "blocks.0.mlp.W_out": W_out, "unembed.W_U": W_U_ours}


def chughtai_split(order: int, frac_train: float, seed: int, ours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Their train / test pairs ``[n, 2]`` in mechgrok's element labels (module docstring)."""
    x, y = torch.meshgrid(torch.arange(order), torch.arange(order), indexing="ij")
    data = torch.stack([x.flatten(), y.flatten()], -1)
    if seed:
        gen = torch.Generator().manual_seed(seed)  # torch.manual_seed(seed) seeds this CPU generator
        data = data[torch.randperm(order * order, generator=gen)]
    n_train = int(frac_train * data.shape[0])
    data = ours[data]
    return data[:n_train], data[n_train:]


def _their_predictions(state: dict[str, Any], where: str) -> torch.Tensor:
    W_x, W_y, W, W_U = _their_weights(state, where)
    n = W_x.shape[0]
    hidden = torch.relu(torch.cat([W_x[:, None].expand(n, n, -1), W_y[None].expand(n, n, -1)], -1) @ W)
    return (hidden @ W_U).argmax(-1)  # [x, y] in their labels


def import_chughtai_checkpoint(path: str | Path, config_path: str | Path, out: str | Path | None = None) -> Run:
    """Import their ``model.pt`` with its ``cfg.json`` (module docstring) as a mechgrok run folder
    (default ``model.mechgrok/`` next to the file); re-importing returns the same run."""
    path, config_path = Path(path), Path(config_path)
    if not path.is_file():
        raise StoreError(f"{path}: no such checkpoint file")
    try:
        text = config_path.read_bytes()
    except OSError as e:
        raise StoreError(f"{config_path}: cannot read ({e.strerror or e})") from None
    cfg = load_json_text(text, str(config_path))
    if not isinstance(cfg, dict):
        raise ConfigError(f"{config_path}: expected a JSON object")
    spec = chughtai_group_spec(cfg)
    group = finite_group(spec)
    out = Path(out) if out is not None else default_import_dir(path)
    digest = file_sha256(path)
    existing = existing_import(out, digest)
    if existing is not None:
        return existing
    state = load_weights_only(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise StoreError(f"{path}: not a state dict")
    W_x = _their_weights(state, str(path))[0]
    if W_x.shape[0] != group.order:
        raise StoreError(
            f"{path}: W_x has {W_x.shape[0]} rows, but {group.name} from {config_path.name} has {group.order} elements"
        )
    ours = chughtai_element_map(spec)
    how = "their element order"
    if ours is None:
        ours = match_group_table(_their_predictions(state, str(path)), group)
        how = "matched from the model's predictions"
        if ours is None:
            raise StoreError(
                f"{path}: the model's predictions are not {group.name}'s table, and without sympy "
                "their element order cannot be rebuilt"
            )
    params = chughtai_state_to_mechgrok(state, ours, str(path))
    layers = cfg.get("layers") if isinstance(cfg.get("layers"), dict) else {}
    frac = cfg.get("frac_train", 0.4)
    frac = float(frac) if isinstance(frac, (int, float)) and not isinstance(frac, bool) and 0 < frac <= 1 else 0.4
    seed = cfg.get("seed", 0)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**53 else 0
    config = RunConfig(
        name=f"chughtai-{spec}-{path.resolve().parent.name or path.stem}"[:128],
        task=TaskConfig(kind="group", group=spec, format="pairs", train_fraction=frac, seed=seed),
        model=ModelConfig(
            kind="mlp",
            d_model=params["embed.W_E"].shape[1],
            d_mlp=params["blocks.0.mlp.W_in"].shape[1],
            tied_embed=False,
            bias=False,
            dtype="float64",
        ),
        optim=OptimConfig(
            lr=float(cfg.get("lr", 1e-3)) if isinstance(cfg.get("lr"), (int, float)) else 1e-3,
            weight_decay=float(cfg.get("weight_decay", 1.0))
            if isinstance(cfg.get("weight_decay"), (int, float))
            else 1.0,
        ),
        train=TrainConfig(steps=1, checkpoint_every=1, log_checkpoints=0),
    )

    def fill(run: Run) -> None:
        run.write_checkpoint(1, params)
        train_ab, test_ab = chughtai_split(group.order, frac, seed, ours)
        atomic_save_tensors(run.path / IMPORT_FILES["split"], {"train_ab": train_ab, "test_ab": test_ab})
        data = run_dataset(run)
        model = run.model(1)
        with torch.no_grad():
            a, b = torch.meshgrid(torch.arange(group.order), torch.arange(group.order), indexing="ij")
            x_all = torch.stack([a.flatten(), b.flatten() + group.order], -1)
            whole = float((model(x_all).argmax(-1) == group.table[a.flatten(), b.flatten()]).double().mean())
            tr_loss, tr_acc = loss_and_accuracy(model(data.train_x), data.train_y)
            te_loss, te_acc = loss_and_accuracy(model(data.test_x), data.test_y)
        row = {
            "step": 1,
            "train_loss": float(tr_loss),
            "test_loss": float(te_loss),
            "train_acc": float(tr_acc),
            "test_acc": float(te_acc),
        }
        atomic_write_bytes(run.path / RUN_FILES["metrics"], (json.dumps(row) + "\n").encode())
        atomic_write_json(
            run.path / IMPORT_FILES["record"],
            {
                "format": CHUGHTAI_FORMAT,
                "source": str(path.resolve()),
                "sha256": digest,
                "group": spec,
                "element_map": how,
                "table_accuracy": whole,
                "their_config": plain(cfg),
                "layers": plain(layers),
            },
        )

    return write_import(out, digest, config, fill)
