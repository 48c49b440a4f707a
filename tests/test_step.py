"""The step module (raymix/step.py) in-process, no Ray: the server's update rules, the
omniscient baseline, model-aggregation deltas, the adversary and its keys, and the record writer."""
from __future__ import annotations

import csv
import inspect
import json

import pytest
import torch

from raymix.config import ExperimentConfig
from raymix.data import load_dataset, partition
from raymix.models import GradientComputer, build_model, get_flat_params
from raymix.records import RecordWriter, read_records
from raymix.seeding import stream_seed, torch_generator
from raymix.step import Adversary, ModelSpec, Server, Workers, keys_for, update_stats


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("synthetic", seed=0)
    model = ModelSpec("mlp", tuple(data.input_shape), data.num_classes)
    torch.manual_seed(0)
    w0 = get_flat_params(build_model("mlp", model.input_shape, model.num_classes)).detach().clone()
    parts = partition(data.y_train, 6, "iid", seed=0)
    shards = [(data.x_train[p], data.y_train[p]) for p in parts]
    return data, model, w0, shards


def _losses(k):
    return torch.zeros(k)


def test_omniscient_equals_plain_averaging(setup):
    data, model, w0, _ = setup
    test = (data.x_test[:50], data.y_test[:50])
    omni = Server(ExperimentConfig(n=7, f=1, aggregator="omniscient"), w0, model, test)
    plain = Server(ExperimentConfig(n=6, f=0, aggregator="mean"), w0, model, test)
    g = torch.Generator().manual_seed(1)
    for step in (1, 2, 3):
        H = torch.randn(6, w0.numel(), generator=g)
        sa = omni.step(step, H, torch.full((1, w0.numel()), 1e6), _losses(6))  # Byzantine rows ignored by the omniscient baseline
        sb = plain.step(step, H, None, _losses(6))
        torch.testing.assert_close(omni.weights(), plain.weights(), rtol=0, atol=0)
        assert sa["cosine"] == pytest.approx(1.0) and sa["drawn"] == "omniscient"
        assert sa["cosine"] == pytest.approx(sb["cosine"]) and sb["drawn"] == "mean"


def test_gradient_mode_is_torch_sgd_on_the_aggregate(setup):
    data, model, w0, _ = setup
    c = ExperimentConfig(n=6, f=0, aggregator="mean", lr=0.1, momentum=0.9, weight_decay=0.01)
    server = Server(c, w0, model, (data.x_test[:10], data.y_test[:10]))
    ref = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(2)
    for step in (1, 2):
        H = torch.randn(6, w0.numel(), generator=g)
        server.step(step, H, None, _losses(6))
        ref.grad = H.mean(0)
        opt.step()
        torch.testing.assert_close(server.weights(), ref.detach())


@pytest.mark.slow  # diagnostics over the 64-rule pool: 12-16 s
def test_server_state_round_trip_evaluate_and_diagnostics(setup):
    data, model, w0, _ = setup
    c = ExperimentConfig(n=7, f=1, aggregator="mixtailor", diagnostics=True)
    a = Server(c, w0, model, (data.x_test, data.y_test))
    H = torch.randn(6, w0.numel())
    first = a.step(1, H, torch.zeros(1, w0.numel()), _losses(6), evaluate=True, diagnose=True)
    assert first["state"]["weights"].shape == w0.shape  # an evaluation step carries the state for checkpoints
    b = Server(c, w0, model, (data.x_test, data.y_test))
    b.load_state(a.state())
    H2 = torch.randn(6, w0.numel())
    byz = -0.1 * H2.mean(0, keepdim=True)
    sa = a.step(2, H2, byz, _losses(6), True, True)
    sb = b.step(2, H2, byz, _losses(6), True, True)
    torch.testing.assert_close(a.weights(), b.weights(), rtol=0, atol=0)
    assert sa["drawn"] == sb["drawn"] and sa["test_accuracy"] == sb["test_accuracy"]
    d = sa["diagnostics"]
    assert set(d["fooled_family"]) == {"comed", "krum", "geomed", "bulyan"}
    # the pool's expected inner product is the draw-weighted mean of its members'
    probs = {spec: p for spec, _, _, p in a.pool.distinct_members()}
    assert d["expected_inner_product"] == pytest.approx(sum(probs[s] * v for s, v in d["relative_inner_product"].items()))


def test_model_mode_one_local_step_is_minus_lr_times_the_gradient(setup):
    _, model, w0, shards = setup
    keys = keys_for(0)
    delta, loss_m = Workers([0, 1, 2], shards[:3], model, keys, 8, "model", 1, 0.1).compute(w0, 5)
    grads, loss_g = Workers([0, 1, 2], shards[:3], model, keys, 8, "gradient").compute(w0, 5)
    torch.testing.assert_close(delta, -0.1 * grads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss_m, loss_g)
    two, _ = Workers([0, 1, 2], shards[:3], model, keys, 8, "model", 2, 0.1).compute(w0, 5)
    assert not torch.allclose(two, delta)


def test_packed_workers_equal_single_workers(setup):
    _, model, w0, shards = setup
    keys = keys_for(0)
    packed, _ = Workers([0, 1, 2], shards[:3], model, keys, 8).compute(w0, 3)
    single = torch.cat([Workers([i], shards[i : i + 1], model, keys, 8).compute(w0, 3)[0] for i in range(3)])
    torch.testing.assert_close(packed, single, rtol=1e-5, atol=1e-6)


def test_draws_made_ahead_on_a_thread_give_the_same_rows(setup):
    """On a GPU the host draws the next step's batches and dropout masks on a thread while the
    device computes (``Workers.prefetch``); forced on here, on the CPU: every step's rows
    are bit for bit those of drawing in place, in order, after a skipped step (a retry or a
    resume asks for a step other than the one drawn ahead) and for a step asked twice."""
    _, model, w0, shards = setup
    keys = keys_for(0)
    plain = Workers([0, 1, 2], shards[:3], model, keys, 8)
    ahead = Workers([0, 1, 2], shards[:3], model, keys, 8)
    ahead.prefetch = True
    assert model.computer("cpu").uses_masks  # the masks travel too
    for step in (3, 4, 7, 8, 8):
        torch.testing.assert_close(ahead.compute(w0, step), plain.compute(w0, step), rtol=0, atol=0)
        assert ahead._ahead is not None and ahead._ahead[0] == step + 1
    assert not plain.prefetch and plain._ahead is None  # the CPU draws in place


def test_label_flip_trains_on_the_byzantine_shards(setup):
    _, model, w0, shards = setup
    cfg = ExperimentConfig(n=7, f=1, aggregator="comed", attack="label_flip(num_classes=10)", batch_size=8)
    adv = Adversary.for_config(cfg, model, shards[5:6])
    rows = adv.rows(4, torch.empty(0, w0.numel()), w0)
    # the same worker id, shard and step with the labels flipped by hand
    plain = Workers([6], shards[5:6], model, keys_for(0), 8)
    xs, ys, seeds, _ = plain._batch(4)
    ref, _ = GradientComputer("mlp", model.input_shape, 10).gradients(w0, xs, 9 - ys, seeds)
    torch.testing.assert_close(rows, ref)


def test_adversary_sees_only_its_rows_and_its_own_stream(setup):
    cfg = ExperimentConfig(n=7, f=2, aggregator="krum", attack="ipm(epsilon=0.5)")
    byz = Adversary.for_config(cfg, None)
    H = torch.randn(5, 10)
    torch.testing.assert_close(byz.rows(1, H, visible=[0, 4]), (-0.5 * H[[0, 4]].mean(0)).expand(2, -1))
    # A randomised attack draws from the adversary's stream (its key, the step), the key
    # Adversary.for_config hands it: exactly the rows of the attack on that generator, and
    # other rows at another step. (That nothing it holds reproduces the server's draws is
    # test_threat_model.py's, on a real run.)
    from raymix.attacks import AdversaryView, build_attack

    g = ExperimentConfig(n=7, f=2, aggregator="krum", attack="gaussian", seed=5)
    adv = Adversary.for_config(g, None)
    own = [build_attack("gaussian")(AdversaryView(H, 7, 2, t, adv.pool, torch_generator(keys_for(5)["adversary"], t))) for t in (3, 4)]
    torch.testing.assert_close(adv.rows(3, H), own[0], rtol=0, atol=0)
    assert not torch.equal(own[0], own[1])


def test_the_adversary_holds_nothing_the_draws_derive_from(setup):
    """The server draws from keys_for(seed)["aggregator"]; the adversary object receives the
    attack, n, f, the pool's public description and its own key, and nothing else: not the
    seed, not the server's key (a one-way function of the seed, unequal to its own)."""
    cfg = ExperimentConfig(n=7, f=1, aggregator="mixtailor", attack="ipm(epsilon=0.1)", seed=12345)
    adv = Adversary.for_config(cfg, None)
    keys = keys_for(cfg.seed)
    held = [v for v in vars(adv).values() if isinstance(v, int)]
    assert keys["aggregator"] not in held and cfg.seed not in held and held == [7, 1, keys["adversary"]]
    assert adv.key == stream_seed(cfg.seed, "adversary") != keys["aggregator"]
    assert set(inspect.signature(Adversary.__init__).parameters) == {"self", "attack", "n", "f", "pool_public", "key", "workers"}
    assert adv.attack is cfg.build_attack()  # the one validation built: plain data, its own arguments only
    assert not hasattr(adv.pool, "draw")  # the public description of the pool cannot draw


def test_update_stats():
    s = update_stats(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert s == {"cosine": 1.0, "inner_product": 2.0, "norm_ratio": 2.0}
    assert update_stats(torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.0]))["cosine"] == -1.0


def test_record_writer_appends_flushes_and_truncates_on_resume(tmp_path):
    w = RecordWriter(tmp_path, ["step", "a", "d.x", "l"])
    for s in range(1, 5):
        w.append({"step": s, "a": float("nan") if s == 2 else s / 10, "d": {"x": s}, "l": ["p", "q"]})
        assert len(read_records(tmp_path)) == s  # flushed at once
    w.close()
    assert read_records(tmp_path)[1]["a"] is None  # NaN -> null: strict JSON
    w = RecordWriter(tmp_path, ["ignored"], resume_count=2)
    w.append({"step": 3, "a": 0.3, "d": {"x": 3}, "l": []})
    w.close()
    assert [r["step"] for r in read_records(tmp_path)] == [1, 2, 3]
    rows = list(csv.DictReader(open(tmp_path / "progress.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and rows[0]["d.x"] == "1" and json.loads(rows[0]["l"]) == ["p", "q"]
