"""Several engine workers on the autograd path (models without a hand-written backward).

Blocks of rows train side by side. Two faults this guards against: each block's optimiser step
edits its rows of the stacked parameters in place, and a chunk whose backward read views of the
same storage failed autograd's version check; and ``functional_call`` (the vmap and loop engines)
swaps parameters into one shared module, so two workers computed with each other's weights and
trained wrong trajectories without an error.
"""

import pytest
import torch

from mechgrok.sweep import EngineConfig, train_batch


def _untied_mlp(cfg):
    return cfg.with_overrides({"model.tied_embed": False, "model.bias": True})


def _transformer(cfg):
    return cfg.with_overrides(
        {
            "model.kind": "transformer",
            "task.format": "equals",
            "model.d_model": 16,
            "model.n_heads": 2,
            "model.d_head": 8,
            "model.d_mlp": 16,
            "train.steps": 30,
        }
    )


def _rnn(cfg):
    return cfg.with_overrides({"model.kind": "rnn", "task.format": "sequence", "model.d_model": 16, "train.steps": 30})


@pytest.mark.parametrize("make", [_untied_mlp, _transformer, _rnn], ids=["untied-mlp", "transformer", "rnn-loop"])
def test_workers_on_the_autograd_path_equal_one_worker(tiny_modadd, make):
    base = make(tiny_modadd)
    configs = [base.with_overrides({"train.seed": s}) for s in range(8)]
    # tiny chunks: several blocks per step, so two workers really update rows side by side
    runs = [train_batch(configs, engine=EngineConfig(workers=w, chunk_mb=0.001), progress=False) for w in (1, 2)]
    for one, two in zip(*runs):
        assert one.metrics["train_loss"] == two.metrics["train_loss"]
        for (name, a), (_, b) in zip(one.model.state_dict().items(), two.model.state_dict().items()):
            assert torch.equal(a, b), name
