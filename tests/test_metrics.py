"""mechgrok.metrics: the one float64 loss/accuracy, metrics row and metrics writer that the trainer,
the sweep engine and the probes share, against float64 references written out by hand."""

import json
import math

import pytest
import torch

from mechgrok import metrics
from mechgrok.metrics import (
    METRIC_KEYS,
    MetricsBuffer,
    batched_loss_and_accuracy,
    loss_and_accuracy,
    loss_divisor,
    metrics_row,
)
from mechgrok.probes._batch import batched_loss_acc
from mechgrok.sweep._kernels import ce_loss_grad


def _ce_reference(z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Cross-entropy and accuracy, example by example in float64 Python arithmetic."""
    nll, right = 0.0, 0
    for row, label in zip(z.double().tolist(), y.tolist()):
        top = max(row)
        lse = top + math.log(sum(math.exp(v - top) for v in row))
        nll += lse - row[label]
        right += row.index(top) == label  # the first maximum, as argmax
    return nll / len(y), right / len(y)


def _bce_reference(z: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    nll = [math.log1p(math.exp(-v)) if t else math.log1p(math.exp(v)) for v, t in zip(z.double().tolist(), y.tolist())]
    right = [(v > 0) == bool(t) for v, t in zip(z.tolist(), y.tolist())]
    return sum(nll) / len(nll), sum(right) / len(right)


def test_loss_and_accuracy_against_float64_references():
    z, y = torch.randn(40, 7), torch.randint(0, 7, (40,))
    z[3, y[3]] = z[3].max() + 1.0  # at least one right answer
    loss, acc = loss_and_accuracy(z, y)
    ref_loss, ref_acc = _ce_reference(z, y)
    assert loss.dtype == torch.float64 and float(loss) == pytest.approx(ref_loss, rel=1e-13)
    assert float(acc) == ref_acc
    # mean_classes: PAIR's -mean(onehot * log_softmax) over batch and classes
    pair = -(torch.nn.functional.one_hot(y, 7) * z.double().log_softmax(-1)).mean()
    assert float(loss_and_accuracy(z, y, "mean_classes")[0]) == pytest.approx(float(pair), rel=1e-13)
    assert float(loss_and_accuracy(z, y, "mean_classes")[1]) == ref_acc
    # one logit: BCE, never divided
    d, t = torch.randn(25, 1) * 3, torch.randint(0, 2, (25,))
    ref_loss, ref_acc = _bce_reference(d[:, 0], t)
    for reduction in ("mean", "mean_classes"):
        loss, acc = loss_and_accuracy(d, t, reduction)
        assert float(loss) == pytest.approx(ref_loss, rel=1e-12) and float(acc) == pytest.approx(ref_acc, abs=1e-15)


def test_loss_divisor():
    assert loss_divisor(7, "mean") == 1.0 and loss_divisor(7, "mean_classes") == 7.0
    assert loss_divisor(1, "mean_classes") == 1.0  # BCE: one logit


@pytest.mark.parametrize("reduction", ["mean", "mean_classes"])
@pytest.mark.parametrize("classes", [1, 5])
def test_batched_loss_and_accuracy_is_the_single_definition_per_row(reduction, classes):
    logits, y = torch.randn(4, 30, classes) * 2, torch.randint(0, max(classes, 2), (30,))
    loss, acc = batched_loss_and_accuracy(logits, y, reduction)
    assert loss.shape == acc.shape == (4,) and loss.dtype == acc.dtype == torch.float64
    for i in range(4):
        ref_loss, ref_acc = loss_and_accuracy(logits[i], y, reduction)
        assert float(loss[i]) == pytest.approx(float(ref_loss), rel=1e-14)
        assert float(acc[i]) == float(ref_acc)
    # the probes' name for it is the same function
    torch.testing.assert_close(batched_loss_acc(logits, y, reduction)[0], loss, rtol=0, atol=0)
    # an empty batch (e.g. no test split): NaN, not a division error
    empty_loss, empty_acc = batched_loss_and_accuracy(logits[:, :0], y[:0], reduction)
    assert torch.isnan(empty_loss).all() and torch.isnan(empty_acc).all()


@pytest.mark.parametrize("reduction", ["mean", "mean_classes"])
@pytest.mark.parametrize("classes", [1, 6])
def test_the_engines_fused_loss_is_the_same_loss(reduction, classes):
    # the kernels keep their own loss fused with its gradient; it must be this module's loss
    c, n = 3, 20
    logits, y = torch.randn(c, n, classes) * 2, torch.randint(0, max(classes, 2), (c, n))
    div = loss_divisor(classes, reduction)
    loss, acc, grad = ce_loss_grad(logits, y, None, torch.full((c,), n), div=div)
    for i in range(c):
        z = logits[i].clone().requires_grad_(True)
        ref_loss, ref_acc = loss_and_accuracy(z, y[i], reduction)
        (ref_grad,) = torch.autograd.grad(ref_loss, z)
        assert float(loss[i]) == pytest.approx(float(ref_loss.detach()), rel=1e-12) and float(acc[i]) == float(ref_acc)
        torch.testing.assert_close(grad[i], ref_grad, rtol=1e-5, atol=1e-9)


def test_metrics_row_keys_and_order():
    row = metrics_row(7, (0.5, 0.25), (0.75, 1.0), 3.0, (1e-3, 0.1, 0.0))
    assert list(row) == list(METRIC_KEYS)
    assert row == {
        "step": 7,
        "train_loss": 0.5,
        "train_acc": 0.25,
        "test_loss": 0.75,
        "test_acc": 1.0,
        "weight_norm": 3.0,
        "lr": 1e-3,
        "weight_decay": 0.1,
        "l1": 0.0,
    }
    # not evaluated at this step: the test keys are absent (strict JSON on disk has no NaN)
    assert "test_loss" not in metrics_row(8, (0.5, 0.25), None, 3.0, (1e-3, 0.1, 0.0))


def test_metrics_buffer_flushes_in_blocks_and_keeps_columns(monkeypatch):
    monkeypatch.setattr(metrics, "METRICS_FLUSH_ROWS", 3)
    written: list[str] = []
    buf = MetricsBuffer(written.append, history=True)
    for step in range(7):
        test = (float("nan"), 0.5) if step % 2 == 0 else None
        buf.add(metrics_row(step, (float(step), 1.0), test, 2.0, (0.1, 0.0, 0.0)))
    assert len(written) == 2 and all(text.count("\n") == 3 for text in written)  # two full blocks so far
    buf.flush()
    buf.flush()  # nothing left: no empty write
    assert len(written) == 3
    rows = [json.loads(line) for line in "".join(written).splitlines()]
    assert [r["step"] for r in rows] == list(range(7))
    assert rows[0]["test_loss"] is None and "test_loss" not in rows[1]  # NaN -> null; not evaluated -> absent
    hist = buf.history
    assert list(hist) == list(METRIC_KEYS) and hist["train_loss"] == [float(s) for s in range(7)]
    assert math.isnan(hist["test_acc"][1]) and hist["test_acc"][2] == 0.5
    # no sink (an in-memory run): nothing is written, the columns are kept
    quiet = MetricsBuffer(None)
    quiet.add(metrics_row(0, (1.0, 0.0), None, 1.0, (0.1, 0.0, 0.0)))
    quiet.flush()
    assert quiet.lines == [] and quiet.history["step"] == [0]
    # a writer-only buffer (sweep members with a run folder) keeps no columns
    assert MetricsBuffer(written.append, history=False).history is None


def test_trainer_and_engine_write_the_same_metrics_rows(tiny_parity, tmp_path):
    from mechgrok import train
    from mechgrok.store import Run
    from mechgrok.sweep import EngineConfig, train_batch

    cfg = tiny_parity.with_overrides({"train.steps": 12, "train.eval_every": 4})
    train(cfg, tmp_path / "single", progress=False)
    train_batch([cfg], [tmp_path / "batched"], engine=EngineConfig(writers=1), progress=False)
    single, batched = Run.open(tmp_path / "single").metrics_rows(), Run.open(tmp_path / "batched").metrics_rows()
    assert [list(r) for r in single] == [list(r) for r in batched]  # the same keys, in the same order
    assert [r["step"] for r in single] == list(range(13))
    for a, b in zip(single, batched):
        for k in METRIC_KEYS:
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)
