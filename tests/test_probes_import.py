"""The progress-measures-paper importer, checked against a straightforward re-implementation of
their model's forward pass, on files written here in their format (tiny p)."""

from __future__ import annotations

import json
import math
import random

import einops
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechgrok import Run, StoreError
from mechgrok.analysis import analyze, load_analysis
from mechgrok.cli import main
from mechgrok.importers import import_nanda_checkpoint, nanda_split, run_dataset

P, D_MODEL, N_HEADS, D_HEAD, D_MLP = 7, 12, 2, 4, 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def their_state(scale: float = 0.5) -> dict[str, torch.Tensor]:
    """A state dict with their names and layouts (vocab p + 1, '=' = token p)."""
    d_vocab, n_ctx = P + 1, 3
    r = lambda *s: torch.randn(*s) * scale
    return {
        "embed.W_E": r(D_MODEL, d_vocab),
        "pos_embed.W_pos": r(n_ctx, D_MODEL),
        "blocks.0.attn.W_K": r(N_HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_Q": r(N_HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_V": r(N_HEADS, D_HEAD, D_MODEL),
        "blocks.0.attn.W_O": r(D_MODEL, D_HEAD * N_HEADS),
        "blocks.0.attn.mask": torch.tril(torch.ones(n_ctx, n_ctx)),
        "blocks.0.mlp.W_in": r(D_MLP, D_MODEL),
        "blocks.0.mlp.b_in": r(D_MLP),
        "blocks.0.mlp.W_out": r(D_MODEL, D_MLP),
        "blocks.0.mlp.b_out": r(D_MODEL),
        "unembed.W_U": r(D_MODEL, d_vocab),
    }


def their_forward(state: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Their Transformer.forward, written out (no LayerNorm, ReLU): logits [batch, pos, p + 1]."""
    W_E = state["embed.W_E"]
    x = torch.einsum("dbp -> bpd", W_E[:, tokens])
    x = x + state["pos_embed.W_pos"][: x.shape[-2]]
    k = torch.einsum("ihd,bpd->biph", state["blocks.0.attn.W_K"], x)
    q = torch.einsum("ihd,bpd->biph", state["blocks.0.attn.W_Q"], x)
    v = torch.einsum("ihd,bpd->biph", state["blocks.0.attn.W_V"], x)
    scores = torch.einsum("biph,biqh->biqp", k, q)
    n = x.shape[-2]
    mask = state["blocks.0.attn.mask"]
    masked = torch.tril(scores) - 1e10 * (1 - mask[:n, :n])
    attn = F.softmax(masked / math.sqrt(D_HEAD), dim=-1)
    z = torch.einsum("biph,biqp->biqh", v, attn)
    z_flat = einops.rearrange(z, "b i q h -> b q (i h)")
    x = x + torch.einsum("df,bqf->bqd", state["blocks.0.attn.W_O"], z_flat)
    pre = torch.einsum("md,bpd->bpm", state["blocks.0.mlp.W_in"], x) + state["blocks.0.mlp.b_in"]
    x = x + torch.einsum("dm,bpm->bpd", state["blocks.0.mlp.W_out"], F.relu(pre)) + state["blocks.0.mlp.b_out"]
    return x @ state["unembed.W_U"]


def their_gen_train_test(frac_train: float, num: int, seed: int):
    """Their split, as written in their code."""
    pairs = [(i, j, num) for i in range(num) for j in range(num)]
    random.seed(seed)
    random.shuffle(pairs)
    div = int(frac_train * len(pairs))
    return pairs[:div], pairs[div:]


CONFIG = {
    "p": P,
    "frac_train": 0.4,
    "seed": 3,
    "lr": 1e-3,
    "weight_decay": 1.0,
    "num_epochs": 40,
    "act_type": "ReLU",
    "use_ln": False,
    "d_model": D_MODEL,
    "num_heads": N_HEADS,
    "d_head": D_HEAD,
    "d_mlp": D_MLP,
    "n_ctx": 3,
    "d_vocab": P + 1,
}


@pytest.fixture
def final_file(tmp_path):
    path = tmp_path / "final.pth"
    torch.save(
        {
            "model": their_state(),
            "config": dict(CONFIG),
            "epoch": 40,
            "train_losses": [2.0 - 0.04 * i for i in range(40)],
            "test_losses": [2.1] * 40,
        },
        path,
    )
    return path


@pytest.fixture
def run_file(tmp_path):
    """Their full-run format: several checkpoints and their epochs."""
    path = tmp_path / "full_run.pth"
    states = [their_state(s) for s in (1.0, 0.6, 0.3)]
    torch.save(
        {
            "checkpoints": states,
            "checkpoint_epochs": [0, 10, 20],
            "config": dict(CONFIG),
            "train_losses": [1.5] * 21,
            "test_losses": [1.9] * 21,
        },
        path,
    )
    return path, states


def test_their_full_run_layout(tmp_path):
    """``state_dicts`` every ``checkpoint_every`` epochs, test losses every 10 epochs."""
    path = tmp_path / "full_run_data.pth"
    states = [their_state(s) for s in (1.0, 0.5)]
    torch.save(
        {
            "state_dicts": states,
            "config": dict(CONFIG, checkpoint_every=100),
            "train_losses": [2.0] * 200,
            "test_losses": [3.0] * 20,
        },
        path,
    )
    run = import_nanda_checkpoint(path)
    assert run.steps == [0, 100]
    m = run.metrics()
    test_steps = m["step"][np.isfinite(m["test_loss"])]
    assert list(test_steps[:3]) == [0, 10, 20] and len(m["step"]) == 200
    tokens = torch.tensor([[2, 3, P]])
    with torch.no_grad():
        torch.testing.assert_close(
            run.model(100)(tokens), their_forward(states[1], tokens)[:, -1, :P], atol=1e-5, rtol=1e-5
        )


def test_forward_matches_their_model(final_file):
    state = torch.load(final_file, weights_only=True)["model"]
    run = import_nanda_checkpoint(final_file)
    model = run.model()
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((P * P,), P)], -1)
    ref = their_forward(state, tokens)[:, -1, :P]  # logits beyond p ('=') ignored
    with torch.no_grad():
        ours = model(tokens)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # the cached hooks agree too: their MLP pre-activation at the last position
    _, cache = model.run_with_cache(tokens)
    assert cache["blocks.0.mlp.hook_pre"].shape == (P * P, 3, D_MLP)


def test_import_writes_a_run_folder(final_file):
    run = import_nanda_checkpoint(final_file)
    assert run.path == final_file.parent / "final.mechgrok"
    cfg = run.config
    assert (cfg.task.p, cfg.task.format, cfg.task.op, cfg.task.pairs) == (P, "equals", "add", "ordered")
    assert (cfg.model.kind, cfg.model.d_model, cfg.model.n_heads, cfg.model.d_head, cfg.model.d_mlp) == (
        "transformer",
        D_MODEL,
        N_HEADS,
        D_HEAD,
        D_MLP,
    )
    assert run.steps == [40]
    m = run.metrics()
    assert m["step"][0] == 0 and m["train_loss"][1] == pytest.approx(1.96)
    assert np.isfinite(m["train_acc"]).sum() == 1 and m["step"][np.isfinite(m["train_acc"])][0] == 40
    record = json.loads((run.path / "import.json").read_text())
    assert record["format"] == "progress-measures-paper" and record["their_config"]["seed"] == 3
    # their exact split
    train, test = their_gen_train_test(0.4, P, 3)
    data = run_dataset(run)
    assert data.train_ab.tolist() == [[i, j] for i, j, _ in train]
    assert data.test_ab.tolist() == [[i, j] for i, j, _ in test]
    assert (data.train_y == (data.train_ab.sum(-1) % P)).all()
    assert data.train_x[:, 2].eq(P).all()
    assert nanda_split(P, 0.4, 3)[0].tolist() == data.train_ab.tolist()
    # importing the same file again reuses the folder
    again = import_nanda_checkpoint(final_file)
    assert again.path == run.path and again.steps == [40]


def test_full_run_format_and_analyze(run_file):
    path, states = run_file
    result = analyze(path)
    run = Run.open(path.parent / "full_run.mechgrok")
    assert run.steps == [0, 10, 20]
    traj = run.trajectory()
    for i, state in enumerate(states):
        model = traj.model(i)
        tokens = torch.tensor([[1, 5, P], [6, 6, P]])
        with torch.no_grad():
            torch.testing.assert_close(model(tokens), their_forward(state, tokens)[:, -1, :P], atol=1e-5, rtol=1e-5)
    assert result.task == "modular" and result.steps.tolist() == [0, 10, 20]
    assert result["fourier/embed_freq_norms"].shape == (3, P // 2)
    assert result["progress/restricted_loss"].shape == (3,)
    loaded = load_analysis(path)  # the .pth path maps to its import folder
    assert loaded.records["summary"] == result.summary
    assert set(loaded.tensors) == set(result.tensors)


def test_cli_analyze_accepts_a_pth(final_file, capsys):
    main(["analyze", str(final_file), "--quiet"])
    out = capsys.readouterr().out
    assert "key frequencies" in out and "final.mechgrok" in out
    assert (final_file.parent / "final.mechgrok" / "analysis" / "analysis.json").exists()


def _expect_error(path, match):
    with pytest.raises(StoreError, match=match) as info:
        import_nanda_checkpoint(path)
    assert "\n" not in str(info.value)


def test_bad_files_get_one_line_errors(tmp_path, final_file):
    bad = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), bad)
    _expect_error(bad, "not a progress-measures-paper run")
    state = their_state()
    del state["blocks.0.mlp.W_in"]
    missing = tmp_path / "missing.pth"
    torch.save({"model": state}, missing)
    _expect_error(missing, "missing 'blocks.0.mlp.W_in'")
    state = their_state()
    state["blocks.0.attn.W_O"] = torch.zeros(3, 3)
    shape = tmp_path / "shape.pth"
    torch.save({"model": state}, shape)
    _expect_error(shape, r"blocks.0.attn.W_O has shape \[3, 3\]")
    gelu = tmp_path / "gelu.pth"
    torch.save({"model": their_state(), "config": {"act_type": "GeLU"}}, gelu)
    _expect_error(gelu, "act_type 'GeLU'")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    _expect_error(garbage, "cannot read as a weights-only torch file")
    _expect_error(tmp_path / "nope.pth", "no such checkpoint file")
    # a different file into a folder that holds another import: refused, nothing overwritten
    import_nanda_checkpoint(final_file, tmp_path / "shared")
    other = tmp_path / "other.pth"
    torch.save({"model": their_state(), "config": dict(CONFIG)}, other)
    with pytest.raises(StoreError, match="already holds a different run"):
        import_nanda_checkpoint(other, tmp_path / "shared")
    assert Run.open(tmp_path / "shared").steps == [40]


def test_pickled_code_is_never_run(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": their_state(), "config": Evil()}, path)
    _expect_error(path, "cannot read as a weights-only torch file")


def test_missing_config_is_inferred_from_shapes(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"model": their_state()}, path)
    run = import_nanda_checkpoint(path)
    assert run.config.task.p == P and run.config.task.train_fraction == pytest.approx(0.3)
    assert run.steps == [0]
