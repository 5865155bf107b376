import os
import random

import numpy as np
import pytest
import torch

# Tiny test models gain nothing from intra-op threads, and OpenMP spin-waiting makes them crawl
# when other processes share the 2 cores.
torch.set_num_threads(1)

from mechgrok import ModelConfig, OptimConfig, RunConfig, TaskConfig, TrainConfig  # noqa: E402 (threads set first)

# benchmarks/gpu_check.sh runs the suite with MECHGROK_TEST_DEVICE=cuda: the fixtures below (and so
# every test that trains from them, the sweep engine's equivalence tests included) then train on
# that device. Asking for CUDA where there is none stops the run: a silent fall-back to the CPU
# would report the CUDA path as checked when it was not.
TEST_DEVICE = os.environ.get("MECHGROK_TEST_DEVICE", "").strip() or "cpu"
if TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.exit(f"MECHGROK_TEST_DEVICE={TEST_DEVICE} but torch {torch.__version__} sees no CUDA device", returncode=2)


@pytest.fixture
def device() -> str:
    """The device tests train on: ``$MECHGROK_TEST_DEVICE``, default ``cpu``."""
    return TEST_DEVICE


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_parity() -> RunConfig:
    """8 bits, parity of bits (1, 5), 60 training strings: groks in a few hundred steps."""
    return RunConfig(
        name="tiny-parity",
        task=TaskConfig(kind="parity", n_bits=8, relevant_bits=(1, 5), n_train=60, n_test=100, seed=3),
        model=ModelConfig(kind="parity_mlp", d_mlp=16, bias=True, n_out=2),
        optim=OptimConfig(lr=1e-2, weight_decay=0.1),
        train=TrainConfig(
            steps=120, checkpoint_every=20, log_checkpoints=5, resume_every=30, eval_every=1, device=TEST_DEVICE
        ),
    )


@pytest.fixture
def tiny_modadd() -> RunConfig:
    return RunConfig(
        name="tiny-modadd",
        task=TaskConfig(kind="modular", p=7, pairs="ordered", format="pairs", train_fraction=0.5),
        model=ModelConfig(kind="mlp", d_model=16, d_mlp=8, tied_embed=True),
        optim=OptimConfig(lr=1e-2, weight_decay=1.0),
        train=TrainConfig(steps=60, checkpoint_every=20, log_checkpoints=4, resume_every=25, device=TEST_DEVICE),
    )
