"""Worker momentum (``worker_momentum: beta``, issue #23 item 1), in process (no Ray): the
sent rows are the buffers m_t = beta m_(t-1) + (1 - beta) g_t, the adversary sees them,
beta = 0 is the raw rows bit for bit, determinism and bit-exact resume through the
checkpoint format; the Ray engine's resume is in the slow tier."""
from __future__ import annotations

import pytest
import torch

from raymix.config import ExperimentConfig
from raymix.records import strip_timings
from raymix.runtime.checkpoint import load_checkpoint, save_checkpoint
from raymix.runtime.resources import Refused
from raymix.runtime.simulation import check_resumable
from raymix.step import LocalSimulation, WorkerMomentum, run_local

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = dict(dataset="synthetic", n=7, f=1, model="mlp", aggregator="mixtailor", attack="ipm(epsilon=0.1)", steps=6,
            eval_every=1, batch_size=16, lr=0.05, momentum=0.9, seed=3)


def cfg(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{**BASE, **kw})


def _records(sim) -> list[dict]:
    out = []
    while not sim.done:
        out.append(strip_timings(sim.advance()))
    return out


def _spy(sim):
    """Record each step's raw honest rows (the workers' output), the rows the server received
    and the honest rows the attack saw."""
    raw, sent, seen = [], [], []
    compute, step = sim.workers.compute, sim.server.step

    def compute_spy(w, t):
        rows, losses = compute(w, t)
        raw.append(rows.clone())
        return rows, losses

    def step_spy(t, H, byz, *a, **k):
        sent.append(H.clone())
        return step(t, H, byz, *a, **k)

    sim.workers.compute, sim.server.step = compute_spy, step_spy
    if sim.adversary is not None:
        attack = sim.adversary.attack
        sim.adversary.attack = lambda view: (seen.append(view.honest.clone()), attack(view))[1]
        sim.adversary.attack.reports_choice = False
    return raw, sent, seen


def test_sent_rows_are_the_formula_s_buffers_and_the_adversary_sees_them():
    beta = 0.7
    sim = LocalSimulation(cfg(worker_momentum=beta))
    raw, sent, seen = _spy(sim)
    _records(sim)
    m = torch.zeros_like(raw[0])
    for t, g in enumerate(raw):
        m = beta * m + (1 - beta) * g  # m_t = beta m_(t-1) + (1 - beta) g_t, m_0 = 0
        assert torch.equal(sent[t], m), t
        assert torch.equal(seen[t], m), t  # the attack's honest rows are the SENT rows
    assert not torch.equal(sent[-1], raw[-1])


def test_beta_zero_sends_the_raw_rows_and_keeps_no_buffers():
    sim = LocalSimulation(cfg())
    assert sim.server.worker_momentum is None
    raw, sent, seen = _spy(sim)
    _records(sim)
    assert all(torch.equal(a, b) for a, b in zip(raw, sent)) and all(torch.equal(a, b) for a, b in zip(raw, seen))
    assert "worker_momentum" not in sim.state()


def test_momentum_changes_the_run_and_is_deterministic():
    plain = run_local(cfg()).records
    a, b = run_local(cfg(worker_momentum=0.9)).records, run_local(cfg(worker_momentum=0.9)).records
    assert [strip_timings(r) for r in a] == [strip_timings(r) for r in b]
    assert [r["test_loss"] for r in a] != [r["test_loss"] for r in plain]


@pytest.mark.parametrize("attack", ["ipm(epsilon=0.1)", "label_flip"])
def test_resume_through_a_checkpoint_is_bit_exact(tmp_path, attack):
    c = cfg(worker_momentum=0.8, attack=attack, eval_every=3)
    whole = _records(LocalSimulation(c))
    first = LocalSimulation(c)
    head = [strip_timings(first.advance())]
    state = first.state()
    assert set(state["worker_momentum"]) == {"honest", "byzantine"}
    assert (state["worker_momentum"]["byzantine"] is not None) == (attack == "label_flip")
    save_checkpoint(tmp_path / "ck", state)
    loaded = load_checkpoint(tmp_path / "ck")  # weights_only: the buffers are plain tensors
    check_resumable(loaded, c)
    second = LocalSimulation(c)
    second.restore(loaded)
    assert head + _records(second) == whole


def test_a_checkpoint_without_buffers_resumes_only_with_beta_zero(tmp_path):
    old = LocalSimulation(cfg(eval_every=3))
    old.advance()
    state = old.state()
    assert "worker_momentum" not in state
    plain = LocalSimulation(cfg(eval_every=3))
    plain.restore(state)  # an older checkpoint (no buffers) loads when beta = 0
    plain.advance()
    with pytest.raises(Refused, match=r"differs from the checkpoint's in \['worker_momentum'\]"):
        check_resumable(state, cfg(eval_every=3, worker_momentum=0.5))
    older = {**state, "config": {k: v for k, v in state["config"].items() if k != "worker_momentum"}}
    check_resumable(older, cfg(eval_every=3))  # an older raymix's config has no such field
    with pytest.raises(Refused, match="holds no worker momentum buffers"):
        check_resumable(older, cfg(eval_every=3, worker_momentum=0.5))
    with pytest.raises(ValueError, match="holds no worker momentum buffers"):
        LocalSimulation(cfg(eval_every=3, worker_momentum=0.5)).restore(state)


def test_worker_momentum_unit():
    wm = WorkerMomentum(0.5)
    g1, g2 = torch.tensor([[2.0, 4.0]]), torch.tensor([[4.0, 0.0]])
    assert torch.equal(wm.apply(g1), torch.tensor([[1.0, 2.0]]))
    assert torch.equal(wm.apply(g2), torch.tensor([[2.5, 1.0]]))
    again = WorkerMomentum(0.5)
    again.load_state(wm.state())
    assert torch.equal(again.apply(g1), wm.apply(g1))


@pytest.mark.slow
def test_ray_engine_resume_with_worker_momentum_matches_local(ray_session, tmp_path):
    """Through the Ray actors (two packs), with participation too: interrupted at the step-3
    checkpoint, resumed, the records equal an uninterrupted run's, and the in-process engine's."""
    from raymix.records import read_records
    from raymix.runtime import run_experiment

    class Interrupt(RuntimeError):
        pass

    def stop(step, ctx):
        if step == 5:
            raise Interrupt("simulated preemption")

    kw = dict(worker_momentum=0.8, aggregator="mixtailor(include=[krum, comed])", participation=6, byzantine_sampling="random")
    c = cfg(workers_per_actor=3, checkpoint_every=3, output_dir=str(tmp_path / "a"), **kw)
    whole = run_experiment(c).records
    c2 = cfg(workers_per_actor=3, checkpoint_every=3, output_dir=str(tmp_path / "b"), **kw)
    with pytest.raises(Interrupt):
        run_experiment(c2, hooks=[stop])
    resumed = run_experiment(c2, resume=True)
    assert resumed.resumed_from == 3
    assert [strip_timings(r) for r in read_records(tmp_path / "b")] == [strip_timings(r) for r in whole]
    local = run_local(cfg(**kw)).records
    assert [r["byzantine_rows"] for r in whole] == [r["byzantine_rows"] for r in local]
    for a, b in zip(whole, local):
        assert a["step"] == b["step"] and a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-6, abs=1e-6)


def _spy_rows(monkeypatch):
    """(rows, f) of every aggregation: what the rules are told."""
    import raymix.step as step_module

    rows = []
    aggregate = step_module.aggregate

    def spy(pool, G, f, key, step):
        rows.append((G.shape[0], f))
        return aggregate(pool, G, f, key, step)

    monkeypatch.setattr(step_module, "aggregate", spy)
    return rows


# --------------------------------------------------------------------------- assumed_f
def test_assumed_f_reaches_the_rules_and_changes_the_aggregate(monkeypatch):
    told = _spy_rows(monkeypatch)
    kw = dict(n=9, f=1, aggregator="trimmed_mean", steps=3)
    true_f, guessed = run_local(cfg(**kw)).records, run_local(cfg(assumed_f=3, **kw)).records
    assert told == [(9, 1)] * 3 + [(9, 3)] * 3
    assert [r["test_loss"] for r in true_f] != [r["test_loss"] for r in guessed]
    assert run_local(cfg(assumed_f=1, **kw)).records[-1]["test_loss"] == true_f[-1]["test_loss"]  # = the true f


def test_assumed_f_is_checked_against_the_pool():
    assert cfg(n=9, f=1, assumed_f=0).rule_f == 0 and cfg(n=9, f=1).rule_f == 1
    with pytest.raises(ValueError, match=r"aggregator 'krum' with assumed_f=4: .*n=9, f=4") as e:
        cfg(n=9, f=1, aggregator="krum", assumed_f=4)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- participation
PART = dict(n=9, f=2, aggregator="mixtailor(include=[krum, comed])", participation=7, steps=8, eval_every=4)


@pytest.mark.parametrize("sampling", ["fixed", "random"])
def test_participation_aggregates_m_rows_and_records_the_drawn_byzantine_count(monkeypatch, sampling):
    from raymix.step import keys_for, participants

    rows = _spy_rows(monkeypatch)
    c = cfg(byzantine_sampling=sampling, **PART)
    sim = LocalSimulation(c)
    crafted = []
    attack = sim.adversary.attack
    sim.adversary.attack = lambda view: (crafted.append((view.n, view.f, view.honest.shape[0])), attack(view))[1]
    sim.adversary.attack.reports_choice = False
    records = _records(sim)
    assert rows == [(7, 2)] * 8  # m rows each step, the rules told f
    counts = [b for r in records for b in r["byzantine_rows"]]
    assert len(counts) == 8
    key = keys_for(c.seed)["aggregator"]
    drawn = [participants(c, key, t) for t in range(1, 9)]
    assert counts == [len(p.byzantine) for p in drawn]
    assert all(len(p.honest) + len(p.byzantine) == 7 for p in drawn)
    assert crafted == [(7, b, 7 - b) for b in counts if b > 0]  # the attack crafts the drawn Byzantine rows
    if sampling == "fixed":
        assert counts == [2] * 8
    else:
        assert set(counts) != {2}  # with seed 3 some step draws fewer than f Byzantine workers
    assert [strip_timings(r) for r in run_local(c).records] == records  # determinism


def test_participation_draw_is_the_server_s_stream():
    """The draw comes from the server's key (never the adversary's, never the public knowledge stream)."""
    from raymix.seeding import torch_generator
    from raymix.step import keys_for, participants

    c = cfg(byzantine_sampling="random", **PART)
    keys = keys_for(c.seed)
    for t in range(1, 6):
        chosen = torch.randperm(9, generator=torch_generator(keys["aggregator"], "participation", t))[:7].sort().values
        p = participants(c, keys["aggregator"], t)
        assert torch.equal(torch.cat([p.honest, p.byzantine + 7]), chosen)
    assert any(not torch.equal(participants(c, keys["adversary"], t).honest, participants(c, keys["aggregator"], t).honest)
               for t in range(1, 6))


def test_participation_with_momentum_moves_only_the_participants_buffers(tmp_path):
    c = cfg(byzantine_sampling="random", worker_momentum=0.6, **{**PART, "steps": 6, "eval_every": 3})
    whole = _records(LocalSimulation(c))
    first = LocalSimulation(c)
    head = [strip_timings(first.advance())]
    save_checkpoint(tmp_path / "ck", first.state())
    second = LocalSimulation(c)
    second.restore(load_checkpoint(tmp_path / "ck"))
    assert head + _records(second) == whole  # bit-exact resume with participation and momentum
    wm = WorkerMomentum(0.5)
    sent = wm.apply(torch.ones(2, 3), index=torch.tensor([0, 2]), size=4)
    assert torch.equal(sent, torch.full((2, 3), 0.5))
    assert torch.equal(wm.buffers["honest"], torch.tensor([[0.5] * 3, [0.0] * 3, [0.5] * 3, [0.0] * 3]))


def test_without_participation_records_have_no_byzantine_rows():
    r = run_local(cfg(steps=2)).records
    assert all("byzantine_rows" not in x for x in r)
