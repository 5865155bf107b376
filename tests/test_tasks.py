import torch

from mechgrok import TaskConfig, make_dataset
from mechgrok.tasks import ModularVocab, modular_table


def test_modular_table_ops():
    for op, fn in [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b)]:
        a, b, y = modular_table(TaskConfig(p=7, op=op))
        assert a.shape[0] == 49
        assert all(int(yy) == fn(int(aa), int(bb)) % 7 for aa, bb, yy in zip(a, b, y))
    a, b, y = modular_table(TaskConfig(p=7, op="div"))
    assert a.shape[0] == 42 and all((int(yy) * int(bb)) % 7 == int(aa) for aa, bb, yy in zip(a, b, y))


def test_split_is_a_partition_and_deterministic():
    task = TaskConfig(p=11, pairs="unordered", train_fraction=0.4, seed=5)
    d1, d2 = make_dataset(task), make_dataset(task)
    assert torch.equal(d1.train_x, d2.train_x)
    pairs = {tuple(x) for x in torch.cat([d1.train_ab, d1.test_ab]).tolist()}
    assert len(pairs) == 11 * 12 // 2 and all(a <= b for a, b in pairs)
    assert d1.train_x.shape[0] == round(0.4 * 66)
    assert not {tuple(x) for x in d1.train_ab.tolist()} & {tuple(x) for x in d1.test_ab.tolist()}
    assert not torch.equal(
        make_dataset(TaskConfig(p=11, seed=6)).train_x, make_dataset(TaskConfig(p=11, seed=5)).train_x
    )


def test_token_formats():
    task = TaskConfig(p=91, format="sequence", train_fraction=0.5)
    d = make_dataset(task)
    v = ModularVocab(91)
    a, b = d.train_ab[0].tolist()
    assert v.decode(d.train_x[0].tolist()) == f"<sos> {a} + {b} mod ="
    assert int(d.train_y[0]) == (a + b) % 91
    eq = make_dataset(TaskConfig(p=13, format="equals"))
    assert eq.train_x.shape[1] == 3 and bool((eq.train_x[:, 2] == 13).all())
    x, a, b = eq.all_inputs()
    assert x.shape == (169, 3) and int(a[14]) == 1 and int(b[14]) == 1


def test_parity_fixed_training_set_and_fresh_test_set():
    task = TaskConfig(kind="parity", n_bits=30, relevant_bits=(0, 1, 2), n_train=1200, n_test=500, seed=1)
    d = make_dataset(task)
    assert d.train_x.shape == (1200, 30) and d.test_x.shape == (500, 30)
    train = {tuple(r) for r in d.train_ab.tolist()}
    test = {tuple(r) for r in d.test_ab.tolist()}
    assert len(train) == 1200 and len(test) == 500 and not train & test
    assert torch.equal(d.train_y, d.train_ab[:, :3].sum(1) % 2)
    assert torch.equal(make_dataset(task).train_x, d.train_x)
    small = make_dataset(TaskConfig(kind="parity", n_bits=6, relevant_bits=(4,), n_train=40, n_test=24))
    assert len({tuple(r) for r in torch.cat([small.train_ab, small.test_ab]).tolist()}) == 64
    assert torch.equal(small.test_y, small.test_ab[:, 4])
