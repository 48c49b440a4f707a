"""Models, flat parameters and the packed gradient computer (fast, no Ray)."""
from __future__ import annotations

import pytest
import torch

from raymix.models import (
    MODELS,
    GradientComputer,
    build_model,
    default_model,
    get_flat_params,
    num_params,
    set_flat_params,
)

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paper_cnn_sizes():
    torch.manual_seed(0)
    m = build_model("paper_cnn", (1, 28, 28), 10)
    assert num_params(m) == 21840  # the paper's MNIST d
    assert [tuple(p.shape) for p in m.parameters()] == [(10, 1, 5, 5), (10,), (20, 10, 5, 5), (20,), (50, 320), (50,), (10, 50), (10,)]
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    c = build_model("paper_cnn", (3, 32, 32), 10)
    assert c.fc1.in_features == 500 and num_params(c) == 31340
    assert c(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("paper_cnn", (1, 16, 16), 10)(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match="paper_cnn"):
        build_model("paper_cnn", (1, 8, 8), 10)
    with pytest.raises(ValueError):
        build_model("paper_cnn", (28, 28), 10)
    with pytest.raises(ValueError, match="known models"):
        build_model("resnet", (1, 28, 28), 10)


def test_other_models_and_defaults():
    for name in MODELS:
        m = build_model(name, (1, 8, 8), 10) if name != "paper_cnn" else build_model(name, (1, 28, 28), 10)
        x = torch.randn(4, *((1, 8, 8) if name != "paper_cnn" else (1, 28, 28)))
        assert m(x).shape == (4, 10)
    assert num_params(build_model("logreg", (1, 8, 8), 10)) == 650
    assert num_params(build_model("mlp", (1, 8, 8), 10)) == 64 * 32 + 32 + 32 * 10 + 10
    assert default_model("mnist") == default_model("fashion_mnist") == default_model("cifar10") == "paper_cnn"
    assert default_model("synthetic") == "mlp"


def test_flat_params_roundtrip():
    torch.manual_seed(0)
    m = build_model("paper_cnn", (1, 28, 28), 10)
    w = get_flat_params(m)
    assert w.shape == (21840,) and w.dtype == torch.float32
    w2 = torch.randn(21840)
    set_flat_params(m, w2)
    assert torch.equal(get_flat_params(m), w2)
    w2[0] = 123.0  # a copy, not a view
    assert get_flat_params(m)[0] != 123.0
    assert torch.equal(m.conv1.weight.reshape(-1), get_flat_params(m)[:250])
    with pytest.raises(ValueError):
        set_flat_params(m, torch.zeros(5))


def _batch(shape, W=12, B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(W, B, *shape, generator=g), torch.randint(0, 10, (W, B), generator=g)


@pytest.mark.parametrize("name,shape", [("paper_cnn", (1, 28, 28)), ("mlp", (1, 16, 16)), ("logreg", (1, 16, 16))])
def test_packed_equals_alone_equals_loop(name, shape):
    torch.manual_seed(1)
    gc = GradientComputer(name, shape, 10)
    w = get_flat_params(build_model(name, shape, 10))
    xs, ys = _batch(shape)
    seeds = [1000 + i for i in range(12)]
    g, loss = gc.gradients(w, xs, ys, seeds)
    assert g.shape == (12, gc.d) and loss.shape == (12,) and g.dtype == torch.float32
    alone = [gc.gradients(w, xs[i : i + 1], ys[i : i + 1], [seeds[i]]) for i in range(12)]
    g1 = torch.cat([a[0] for a in alone])
    l1 = torch.cat([a[1] for a in alone])
    gl, ll = gc.gradients_loop(w, xs, ys, seeds)
    assert torch.allclose(g, g1, atol=TOL, rtol=0) and torch.allclose(loss, l1, atol=TOL)
    assert torch.allclose(g, gl, atol=TOL, rtol=0) and torch.allclose(loss, ll, atol=TOL)
    # a sub-pack in another order gives the same rows
    order = [5, 2, 9]
    gs, _ = gc.gradients(w, xs[order], ys[order], [seeds[i] for i in order])
    assert torch.allclose(gs, g[order], atol=TOL, rtol=0)
    assert g.abs().sum() > 0
    # the loop method is selectable and agrees
    gm, _ = GradientComputer(name, shape, 10, method="loop").gradients(w, xs, ys, seeds)
    assert torch.allclose(gm, g, atol=TOL, rtol=0)


def test_dropout_active_and_seeded():
    shape = (1, 28, 28)
    torch.manual_seed(2)
    gc = GradientComputer("paper_cnn", shape, 10)
    w = get_flat_params(build_model("paper_cnn", shape, 10))
    xs, ys = _batch(shape, W=1)
    xs2, ys2 = xs.expand(3, *xs.shape[1:]), ys.expand(3, -1)
    g, _ = gc.gradients(w, xs2, ys2, [7, 7, 8])
    assert torch.allclose(g[0], g[1], atol=TOL, rtol=0)  # same seed, same batch: same masks
    assert (g[0] - g[2]).abs().max() > 1e-3  # different seed: different dropout
    # the dropout-free (eval) gradient differs from both
    m = build_model("paper_cnn", shape, 10)
    set_flat_params(m, w)
    m.eval()
    torch.nn.functional.cross_entropy(m(xs[0]), ys[0]).backward()
    g_eval = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    assert (g_eval - g[0]).abs().max() > 1e-3
    masks = gc.masks([7], 16)
    assert [tuple(mk.shape) for mk in masks] == [(1, 16, 20, 1, 1), (1, 16, 50)]
    assert set(torch.cat([mk.reshape(-1) for mk in masks]).unique().tolist()) == {0.0, 2.0}


def test_arbitrary_labels_and_errors():
    shape = (1, 16, 16)
    gc = GradientComputer("mlp", shape, 10)
    w = torch.zeros(gc.d)
    xs, ys = _batch(shape, W=2, B=4)
    g1, _ = gc.gradients(w, xs, ys, [0, 1])
    g2, _ = gc.gradients(w, xs, 9 - ys, [0, 1])  # label flipping
    assert not torch.allclose(g1, g2)
    with pytest.raises(ValueError):
        gc.gradients(torch.zeros(3), xs, ys, [0, 1])
    with pytest.raises(ValueError):
        gc.gradients(w, xs, ys, [0])
    with pytest.raises(ValueError):
        gc.gradients(w, xs[0], ys[0], [0])
    with pytest.raises(ValueError):
        GradientComputer("mlp", shape, 10, method="magic")


def test_loss_and_accuracy():
    shape = (1, 16, 16)
    gc = GradientComputer("logreg", shape, 10)
    x = torch.randn(2500, *shape)
    y = torch.randint(0, 10, (2500,))
    loss, acc = gc.loss_and_accuracy(torch.zeros(gc.d), x, y, batch_size=1000)
    assert abs(loss - torch.log(torch.tensor(10.0)).item()) < 1e-5
    # zero weights: all logits tie, argmax picks class 0
    assert acc == pytest.approx(float((y == 0).float().mean()))
    # a model that reads the label off the input is perfectly accurate
    x2 = torch.zeros(300, *shape)
    y2 = torch.arange(300) % 10
    x2.view(300, -1)[torch.arange(300), y2] = 1.0
    w = torch.zeros(gc.d)
    w[: 10 * 256].view(10, 256)[torch.arange(10), torch.arange(10)] = 10.0
    loss2, acc2 = gc.loss_and_accuracy(w, x2, y2, batch_size=128)
    assert acc2 == 1.0 and loss2 < 1e-3
    # eval is deterministic (no dropout) for a dropout model too
    gcd = GradientComputer("paper_cnn", (1, 28, 28), 10)
    torch.manual_seed(0)
    wd = get_flat_params(build_model("paper_cnn", (1, 28, 28), 10))
    xd = torch.randn(50, 1, 28, 28)
    yd = torch.randint(0, 10, (50,))
    l_a, a_a = gcd.loss_and_accuracy(wd, xd, yd)
    l_b, a_b = gcd.loss_and_accuracy(wd, xd, yd, batch_size=7)
    assert abs(l_a - l_b) < 1e-5 and a_a == a_b


def test_constructor_does_not_touch_global_rng():
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    GradientComputer("paper_cnn", (1, 28, 28), 10)
    assert torch.equal(torch.rand(3), a)


def test_benchmark_runs():
    r = GradientComputer("paper_cnn", (1, 28, 28), 10).benchmark(workers=10, batch=50, repeats=3)
    print(f"\npaper_cnn W=10 B=50 threads={torch.get_num_threads()}: vmap {r['vmap']*1e3:.1f} ms, loop {r['loop']*1e3:.1f} ms, loop/vmap {r['speedup']:.2f}")
    assert r["vmap"] > 0 and r["loop"] > 0
