import math

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import ActivationCache, HookedRootModule

from mechgrok import ModelConfig, TaskConfig, build_model, make_dataset
from mechgrok.models import cossin_embedding, is_hooked

P = 7
CASES = {
    "mlp": (ModelConfig(kind="mlp", d_model=12, d_mlp=6, tied_embed=True), TaskConfig(p=P)),
    "mlp_untied_bias": (ModelConfig(kind="mlp", d_model=12, d_mlp=6, bias=True), TaskConfig(p=P)),
    "cossin_mlp": (ModelConfig(kind="cossin_mlp", d_mlp=5), TaskConfig(p=P)),
    "parity_mlp": (
        ModelConfig(kind="parity_mlp", d_mlp=8, bias=True, n_out=1),
        TaskConfig(kind="parity", n_bits=6, n_train=20, n_test=20),
    ),
    "transformer": (
        ModelConfig(kind="transformer", d_model=16, n_heads=2, d_head=8, d_mlp=32),
        TaskConfig(p=P, format="equals"),
    ),
    "rnn": (ModelConfig(kind="rnn", d_model=16), TaskConfig(p=P, format="sequence")),
    "lstm": (ModelConfig(kind="lstm", d_model=16), TaskConfig(p=P, format="sequence")),
}


def _model_and_inputs(name):
    mcfg, tcfg = CASES[name]
    model = build_model(mcfg, tcfg, seed=0)
    return model, make_dataset(tcfg).train_x[:5]


@pytest.mark.parametrize("name", list(CASES))
def test_every_model_is_hooked_and_caches(name):
    model, x = _model_and_inputs(name)
    assert isinstance(model, HookedRootModule)
    logits = model(x)
    assert logits.shape[0] == 5 and logits.shape[1] == model.cfg.d_vocab_out
    out, cache = model.run_with_cache(x)
    torch.testing.assert_close(out, logits)
    cache = ActivationCache(cache, model)
    assert "hook_embed" in cache.cache_dict and "hook_logits" in cache.cache_dict
    torch.testing.assert_close(cache["hook_logits"], logits)
    assert not model.has_hooks() if hasattr(model, "has_hooks") else True
    # no hook stays attached after run_with_cache
    assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())


@pytest.mark.parametrize("name", ["mlp", "cossin_mlp", "parity_mlp", "transformer"])
def test_mlp_hooks_and_ablation_via_run_with_hooks(name):
    model, x = _model_and_inputs(name)
    _, cache = model.run_with_cache(x)
    cache = ActivationCache(cache, model)
    post = cache["post", 0]
    torch.testing.assert_close(post, F.relu(cache["pre", 0]))
    assert post.shape[-1] == model.cfg.d_mlp

    def zero(t, hook):
        return torch.zeros_like(t)  # a new tensor, never an in-place edit

    ablated = model.run_with_hooks(x, fwd_hooks=[("blocks.0.mlp.hook_post", zero)])
    assert not torch.allclose(ablated, model(x))
    assert all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())


def test_mlp_forward_matches_reference():
    model, x = _model_and_inputs("mlp")
    W_E = model.embed.W_E.double()
    mlp = model.blocks[0].mlp
    h = W_E[x[:, 0]] @ mlp.W_in.double() + W_E[x[:, 1]] @ mlp.W_in.double()
    ref = (F.relu(h) @ mlp.W_out.double()) @ W_E.T  # tied: logits = out . W_E^T
    torch.testing.assert_close(model(x).double(), ref, rtol=1e-5, atol=1e-5)
    assert "unembed.W_U" not in model.state_dict()


def test_cossin_embedding_is_fixed_and_on_the_unit_circle():
    model, x = _model_and_inputs("cossin_mlp")
    E = cossin_embedding(P, 1)
    torch.testing.assert_close(E.norm(dim=1), torch.ones(P))
    assert math.isclose(float(E[1, 0]), math.cos(2 * math.pi / P), rel_tol=1e-6)
    assert set(model.state_dict()) == {"blocks.0.mlp.W_in", "blocks.0.mlp.W_out"}
    assert all(p is not model.W_E for p in model.parameters())


def test_transformer_layouts_and_reference_forward():
    model, x = _model_and_inputs("transformer")
    sd = model.state_dict()
    h, d, e, m = 2, 16, 8, 32
    assert sd["embed.W_E"].shape == (P + 1, d) and sd["pos_embed.W_pos"].shape == (3, d)
    assert sd["blocks.0.attn.W_Q"].shape == (h, d, e) and sd["blocks.0.attn.W_O"].shape == (h, e, d)
    assert sd["blocks.0.mlp.W_in"].shape == (d, m) and sd["unembed.W_U"].shape == (d, P)
    # straightforward float64 re-implementation
    sd = {k: v.double() for k, v in sd.items()}
    r = sd["embed.W_E"][x] + sd["pos_embed.W_pos"]
    q = torch.einsum("bpd,hde->bhpe", r, sd["blocks.0.attn.W_Q"])
    k = torch.einsum("bpd,hde->bhpe", r, sd["blocks.0.attn.W_K"])
    v = torch.einsum("bpd,hde->bhpe", r, sd["blocks.0.attn.W_V"])
    s = q @ k.transpose(-1, -2) / math.sqrt(e)
    s = s.masked_fill(~torch.tril(torch.ones(3, 3, dtype=torch.bool)), float("-inf"))
    z = s.softmax(-1) @ v
    r = r + torch.einsum("bhpe,hed->bpd", z, sd["blocks.0.attn.W_O"])
    r = (
        r
        + F.relu(r @ sd["blocks.0.mlp.W_in"] + sd["blocks.0.mlp.b_in"]) @ sd["blocks.0.mlp.W_out"]
        + sd["blocks.0.mlp.b_out"]
    )
    ref = r[:, -1] @ sd["unembed.W_U"]
    torch.testing.assert_close(model(x).double(), ref, rtol=1e-4, atol=1e-5)
    _, cache = model.run_with_cache(x)
    assert cache["blocks.0.attn.hook_pattern"].shape == (5, h, 3, 3)


def test_parity_weights_per_bit_are_rows_of_W_in():
    model, x = _model_and_inputs("parity_mlp")
    assert model.W_in.shape == (6, 8)
    with torch.no_grad():
        model.blocks[0].mlp.W_in[3] = 0
    x2 = x.clone()
    x2[:, 3] = 1 - x2[:, 3]
    torch.testing.assert_close(model(x), model(x2))  # a bit with zero weights cannot matter


def test_init_is_seeded():
    mcfg, tcfg = CASES["transformer"]
    a, b = build_model(mcfg, tcfg, seed=3), build_model(mcfg, tcfg, seed=3)
    c = build_model(mcfg, tcfg, seed=4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.embed.W_E, c.embed.W_E)


@pytest.mark.parametrize("name", ["mlp", "mlp_untied_bias", "cossin_mlp"])
def test_fast_path_equals_literal_embedding_path(name):
    """The (W_E W_in)[a] and post (W_out W_U) shortcuts agree with the literal (hooked) path."""
    model, x = _model_and_inputs(name)
    fast = model(x)
    grads_fast = torch.autograd.grad(fast.square().sum(), list(model.parameters()))
    seen = {}

    def keep(t, hook):
        seen["emb"] = t
        return t

    with model.hooks(fwd_hooks=[("hook_embed", keep), ("blocks.0.hook_mlp_out", lambda t, hook: t)]):
        literal = model(x)
        grads_lit = torch.autograd.grad(literal.square().sum(), list(model.parameters()))
    assert seen["emb"].shape == (5, 2, model.cfg.d_model)
    torch.testing.assert_close(fast, literal, rtol=1e-5, atol=1e-6)
    for g1, g2 in zip(grads_fast, grads_lit):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    # edits made by hooks are honoured
    for hook in ("hook_embed", "blocks.0.hook_mlp_out"):
        edited = model.run_with_hooks(x, fwd_hooks=[(hook, lambda t, hook: torch.zeros_like(t))])
        assert not torch.allclose(edited, fast)


# --- every hook kind fires at every hook point of every model --------------------------------

HOOK_CASES = {
    **CASES,
    "parity_mlp_2": (ModelConfig(kind="parity_mlp", d_mlp=8, bias=True, n_out=2), CASES["parity_mlp"][1]),
}


def _plain_logits_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _hook_once(model, x, name, how, fired):
    """Attach one hook to ``name`` the way ``how`` says, run forward and backward, detach it."""
    point = model.hook_dict[name]

    def tl_hook(t, hook):
        fired.append(hook.name)  # returns None: observes without editing

    def torch_hook(*args):
        fired.append(name)

    def run():
        logits = model(x)
        logits.square().sum().backward()
        return logits.detach()

    model.zero_grad(set_to_none=True)
    if how in ("hooks_fwd", "hooks_bwd"):
        key = "fwd_hooks" if how == "hooks_fwd" else "bwd_hooks"
        with model.hooks(**{key: [(name, tl_hook)]}):
            logits = run()
    elif how == "run_with_hooks_fwd":
        logits = model.run_with_hooks(x, fwd_hooks=[(name, tl_hook)])
        logits.square().sum().backward()
        logits = logits.detach()
    elif how == "run_with_hooks_bwd":
        # backward hooks must outlive the call to see the backward pass
        logits = model.run_with_hooks(x, bwd_hooks=[(name, tl_hook)], reset_hooks_end=False)
        logits.square().sum().backward()
        logits = logits.detach()
        model.reset_hooks()
    elif how in ("add_hook_fwd", "add_hook_bwd"):
        model.add_hook(name, tl_hook, dir=how[-3:])
        try:
            logits = run()
        finally:
            model.reset_hooks()
    else:
        register = {
            "torch_forward": point.register_forward_hook,
            "torch_forward_pre": point.register_forward_pre_hook,
            "torch_full_backward": point.register_full_backward_hook,
            "torch_full_backward_pre": point.register_full_backward_pre_hook,
        }[how]
        handle = register(torch_hook)
        try:
            logits = run()
        finally:
            handle.remove()
    return logits, {n: p.grad.clone() for n, p in model.named_parameters()}


HOW = [
    "hooks_fwd",
    "hooks_bwd",
    "run_with_hooks_fwd",
    "run_with_hooks_bwd",
    "add_hook_fwd",
    "add_hook_bwd",
    "torch_forward",
    "torch_forward_pre",
    "torch_full_backward",
    "torch_full_backward_pre",
]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", list(HOOK_CASES))
def test_every_hook_kind_fires_at_every_hook_point(name, how, device):
    """A fast path that skips a hook point must notice every kind of hook on it
    (backward hooks on the MLPs' hook_embed / hook_mlp_out never fired); the hooked path gives the
    same logits and parameter gradients as the fast one."""
    mcfg, tcfg = HOOK_CASES[name]
    model = build_model(mcfg, tcfg, seed=0).to(device)
    x = make_dataset(tcfg).train_x[:5].to(device)
    ref_logits, ref_grads = _plain_logits_and_grads(model, x)
    assert len(model.hook_dict) >= 4
    for point in model.hook_dict:
        fired = []
        logits, grads = _hook_once(model, x, point, how, fired)
        assert fired == [point], f"{how} hook on {point} fired {fired}"
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6, msg=f"{how} on {point}")
        for n in ref_grads:
            torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=f"{how} on {point}: {n}")
    assert not is_hooked(*model.hook_dict.values())  # nothing left attached


# the global backward hook also sees Embed/nn.RNN modules, whose integer inputs carry no gradient
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("name", list(HOOK_CASES))
def test_global_module_hooks_fire_at_every_hook_point(name, device):
    """``torch.nn.modules.module.register_module_*_hook`` hooks run at every module call, so they
    too must switch off the paths that skip hook points."""
    from torch.nn.modules import module as torch_module

    mcfg, tcfg = HOOK_CASES[name]
    model = build_model(mcfg, tcfg, seed=0).to(device)
    x = make_dataset(tcfg).train_x[:5].to(device)
    ref_logits, ref_grads = _plain_logits_and_grads(model, x)
    names = {m: n for n, m in model.hook_dict.items()}
    fwd, bwd = set(), set()
    handles = [
        torch_module.register_module_forward_hook(lambda m, i, o: fwd.add(names.get(m))),
        torch_module.register_module_full_backward_hook(lambda m, gi, go: bwd.add(names.get(m))),
    ]
    try:
        logits, grads = _plain_logits_and_grads(model, x)
    finally:
        for h in handles:
            h.remove()
    assert set(model.hook_dict) <= fwd and set(model.hook_dict) <= bwd
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_backward_hook_on_input_bits_sees_the_input_gradient_and_leaves_the_input_alone(device):
    """Parity bits carry no gradient; a backward hook on hook_embed must still fire (with
    dL/dx = dL/dpre W_in^T) and must not mark the caller's tensor as requiring grad."""
    mcfg, tcfg = HOOK_CASES["parity_mlp_2"]
    model = build_model(mcfg, tcfg, seed=0).double().to(device)
    x = make_dataset(tcfg).train_x[:5].double().to(device)
    seen = {}
    with model.hooks(bwd_hooks=[("hook_embed", lambda g, hook: seen.update(g=g))]):
        model(x).sum().backward()
    assert not x.requires_grad
    xr = x.clone().requires_grad_(True)
    model(xr).sum().backward()
    torch.testing.assert_close(seen["g"], xr.grad)
