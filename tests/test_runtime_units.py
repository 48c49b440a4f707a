"""The runtime's actor classes used in-process (no Ray): the aggregator's update rules, the
omniscient baseline, model-aggregation deltas, the adversary, and the record writer."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from raymix.config import ExperimentConfig
from raymix.data import load_dataset, partition
from raymix.models import GradientComputer, build_model, get_flat_params
from raymix.runtime.aggregator import Aggregator, update_stats
from raymix.runtime.records import RecordWriter, read_records
from raymix.runtime.workers import ByzantineWorker, HonestWorker, ShardedData


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("synthetic", seed=0)
    model = {"name": "mlp", "input_shape": tuple(data.input_shape), "num_classes": data.num_classes}
    torch.manual_seed(0)
    w0 = get_flat_params(build_model("mlp", model["input_shape"], model["num_classes"])).detach().clone()
    parts = partition(data.y_train, 6, "iid", seed=0)
    shards = [(data.x_train[p], data.y_train[p]) for p in parts]
    return data, model, w0, shards


def _aux(k):
    return [{"loss": torch.zeros(k), "seconds": 0.0}]


def test_omniscient_equals_plain_averaging(setup):
    data, model, w0, _ = setup
    test = (data.x_test[:50], data.y_test[:50])
    omni = Aggregator(ExperimentConfig(n=7, f=1, aggregator="omniscient").to_dict(), w0, model, test)
    plain = Aggregator(ExperimentConfig(n=6, f=0, aggregator="mean").to_dict(), w0, model, test)
    g = torch.Generator().manual_seed(1)
    for step in (1, 2, 3):
        H = torch.randn(6, w0.numel(), generator=g)
        byz = (torch.full((1, w0.numel()), 1e6), 0.0)  # ignored by the omniscient baseline
        wa, sa = omni.step(step, False, False, byz, 1, H, *_aux(6))
        wb, sb = plain.step(step, False, False, None, 1, H, *_aux(6))
        torch.testing.assert_close(wa, wb, rtol=0, atol=0)
        assert sa["cosine"] == pytest.approx(1.0) and sa["drawn"] == "omniscient"


def test_gradient_mode_is_torch_sgd_on_the_aggregate(setup):
    data, model, w0, _ = setup
    c = ExperimentConfig(n=6, f=0, aggregator="mean", lr=0.1, momentum=0.9, weight_decay=0.01)
    agg = Aggregator(c.to_dict(), w0, model, (data.x_test[:10], data.y_test[:10]))
    ref = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
    g = torch.Generator().manual_seed(2)
    for step in (1, 2):
        H = torch.randn(6, w0.numel(), generator=g)
        w, _ = agg.step(step, False, False, None, 1, H, *_aux(6))
        ref.grad = H.mean(0)
        opt.step()
        torch.testing.assert_close(w, ref.detach())


def test_aggregator_state_round_trip_and_evaluate(setup):
    data, model, w0, _ = setup
    c = ExperimentConfig(n=7, f=1, aggregator="mixtailor", diagnostics=True)
    a = Aggregator(c.to_dict(), w0, model, (data.x_test, data.y_test))
    H = torch.randn(6, w0.numel())
    a.step(1, True, True, (torch.zeros(1, w0.numel()), 0.0), 1, H, *_aux(6))
    b = Aggregator(c.to_dict(), w0, model, (data.x_test, data.y_test))
    b.load_state(a.state())
    H2 = torch.randn(6, w0.numel())
    byz = (-0.1 * H2.mean(0, keepdim=True), 0.0)
    wa, sa = a.step(2, True, True, byz, 1, H2, *_aux(6))
    wb, sb = b.step(2, True, True, byz, 1, H2, *_aux(6))
    torch.testing.assert_close(wa, wb, rtol=0, atol=0)
    assert sa["drawn"] == sb["drawn"] and sa["test_accuracy"] == sb["test_accuracy"]
    assert set(sa["diagnostics"]["fooled_family"]) == {"comed", "krum", "geomed", "bulyan"}


def test_model_mode_one_local_step_is_minus_lr_times_the_gradient(setup):
    _, model, w0, shards = setup
    run = {"seed": 0, "batch_size": 8, "mode": "model", "local_steps": 1, "lr": 0.1}
    delta, loss_m = ShardedData([0, 1, 2], shards[:3], model, run).compute(w0, 5)
    grads, loss_g = ShardedData([0, 1, 2], shards[:3], model, {**run, "mode": "gradient"}).compute(w0, 5)
    torch.testing.assert_close(delta, -0.1 * grads, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss_m, loss_g)
    two, _ = ShardedData([0, 1, 2], shards[:3], model, {**run, "local_steps": 2}).compute(w0, 5)
    assert not torch.allclose(two, delta)


def test_packed_worker_equals_single_workers(setup):
    _, model, w0, shards = setup
    run = {"seed": 0, "batch_size": 8, "mode": "gradient", "local_steps": 1, "lr": 0.1}
    packed, _ = HonestWorker([0, 1, 2], shards[:3], model, run).compute(w0, 3)
    single = torch.cat([HonestWorker([i], shards[i : i + 1], model, run).compute(w0, 3)[0] for i in range(3)])
    torch.testing.assert_close(packed, single, rtol=1e-5, atol=1e-6)


def test_label_flip_runs_on_the_byzantine_shards(setup):
    _, model, w0, shards = setup
    run = {"seed": 0, "batch_size": 8, "mode": "gradient", "local_steps": 1, "lr": 0.1}
    byz = ByzantineWorker("label_flip(num_classes=10)", 7, 1, None, [6], shards[5:6], model, run)
    rows, _ = byz.run(4, w0, None)
    # the same worker id, shard and step with the labels flipped by hand
    data = ShardedData([6], shards[5:6], model, run)
    xs, ys, seeds = data._batch(4)
    ref, _ = GradientComputer("mlp", model["input_shape"], 10).gradients(w0, xs, 9 - ys, seeds)
    torch.testing.assert_close(rows, ref)


def test_adversary_sees_only_its_rows_and_its_own_stream(setup):
    _, model, w0, _ = setup
    byz = ByzantineWorker("ipm(epsilon=0.5)", 7, 2, None, run={"seed": 0})
    blocks = [torch.randn(3, 10), torch.randn(2, 10)]
    rows, _ = byz.run(1, None, [0, 4], *blocks)
    H = torch.cat(blocks)[[0, 4]]
    torch.testing.assert_close(rows, (-0.5 * H.mean(0)).expand(2, -1))
    g1, _ = ByzantineWorker("gaussian", 7, 2, None, run={"seed": 0}).run(3, None, None, *blocks)
    g2, _ = ByzantineWorker("gaussian", 7, 2, None, run={"seed": 0}).run(3, None, None, *blocks)
    torch.testing.assert_close(g1, g2)  # stateless per step: a retried step draws the same


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
