"""ExperimentConfig: one object from YAML, flags and Tune dicts; every impossible
combination refused before any actor starts (and without starting Ray)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from raymix.cli import build_run_parser, config_from_args
from raymix.config import ExperimentConfig
from raymix.runtime.resources import actor_groups, actor_sizes, plan_resources, resources_for


def test_defaults_are_the_paper_setting():
    c = ExperimentConfig()
    assert (c.n, c.f, c.batch_size, c.lr, c.momentum, c.weight_decay) == (12, 2, 50, 0.001, 0.9, 1e-4)
    assert c.aggregator == "mixtailor" and c.attack == "ipm(epsilon=0.1)"


def test_to_dict_round_trips():
    c = ExperimentConfig(n=7, f=1, attack="alie", attack_knowledge=3, aggregator="mixtailor(exclude=[bulyan])", seed=4,
                         eval_test_limit=100, resampling=1, num_gpus_per_worker=0.25, output_dir="/tmp/x", checkpoint_every=50)
    d = c.to_dict()
    assert ExperimentConfig.from_dict(d) == c
    assert set(d) == set(ExperimentConfig.field_names())


def test_from_dict_nested_sections_and_spec_mappings():
    c = ExperimentConfig.from_dict({
        "dataset": "synthetic",
        "optimizer": {"lr": 0.01, "momentum": 0.5},
        "threat": {"n": 7, "f": 1, "attack": {"name": "ipm", "epsilon": 10}},
    })
    assert (c.lr, c.momentum, c.n, c.f) == (0.01, 0.5, 7, 1)
    assert c.attack == "ipm(epsilon=10)"


def test_from_dict_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown config key\(s\): bogus, optimizer.lrate"):
        ExperimentConfig.from_dict({"bogus": 1, "optimizer": {"lrate": 0.1}})


def test_from_dict_accepts_numpy_scalars():
    import numpy as np

    c = ExperimentConfig.from_dict({"lr": np.float64(0.01), "seed": np.int64(3), "n": np.int32(7), "f": 1})
    assert c.lr == 0.01 and c.seed == 3 and isinstance(c.seed, int) and c.n == 7


def test_yaml_and_flags_override(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"n": 7, "f": 1, "steps": 5, "attack": "ipm(epsilon=0.1)", "lr": 0.01}))
    assert ExperimentConfig.from_yaml(path) == ExperimentConfig(n=7, f=1, steps=5, lr=0.01)
    args = build_run_parser().parse_args(
        ["--config", str(path), "--n", "12", "--f", "2", "--attack", "ipm(epsilon=10)", "--batch-size", "8",
         "--eval_test_limit", "none", "--diagnostics", "--attack-knowledge", "4"])
    c = config_from_args(args)
    assert (c.n, c.f, c.attack, c.batch_size, c.steps, c.lr, c.diagnostics, c.attack_knowledge) == (12, 2, "ipm(epsilon=10)", 8, 5, 0.01, True, 4)


def test_sweep_style_yaml_reads_the_experiment_section(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "experiment": {"n": 7, "f": 1}, "search": {"seed": {"grid_search": [0, 1]}}}))
    assert ExperimentConfig.from_yaml(path).n == 7


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=6, f=1, aggregator="mixtailor"), r"16 of 64 members fail.*bulyan.*n >= 4f\+3 = 7"),
    (dict(n=10, f=2, aggregator="bulyan(select=krum, agg=comed)"), r"bulyan.*n >= 4f\+3 = 11"),
    (dict(n=12, f=6), r"f must be < n/2"),
    (dict(n=12, f=7), r"f must be < n/2"),
    (dict(f=-1), r"invalid experiment config: f must be an integer >= 0, got -1$"),
    (dict(dataset="imagenet"), r"unknown dataset 'imagenet'"),
    (dict(aggregator="krumm"), r"unknown rule 'krumm'"),
    (dict(aggregator="mixtailor(exclude=[nope])"), r"unknown rule class"),
    (dict(attack="nope"), r"unknown attack 'nope'"),
    (dict(attack="ipm(epsilon=abc)"), r"attack ipm: epsilon must be a finite number >= 0, got 'abc'$"),
    (dict(partition="sorted"), r"invalid experiment config: partition must be one of iid, label_sorted, dirichlet, got 'sorted'$"),
    (dict(partition="dirichlet", dirichlet_alpha=0), r"dirichlet_alpha must be a finite number > 0, got 0$"),
    (dict(model="resnet"), r"unknown model 'resnet'"),
    (dict(steps=0), r"steps must be an integer >= 1"),
    (dict(lr=0), r"invalid experiment config: lr must be a finite number > 0, got 0$"),
    (dict(lr=-0.1), r"lr must be a finite number > 0, got -0.1$"),
    (dict(lr="fast"), r"lr must be a finite number > 0, got 'fast'$"),
    (dict(lr=float("inf")), r"lr must be a finite number > 0, got inf$"),
    (dict(batch_size=0), r"batch_size must be an integer >= 1"),
    (dict(momentum=-0.1), r"momentum must be a finite number >= 0, got -0.1$"),
    (dict(eval_every=0), r"eval_every must be an integer >= 1"),
    (dict(eval_test_limit=0), r"eval_test_limit must be an integer >= 1 or none"),
    (dict(workers_per_actor=0), r"workers_per_actor"),
    (dict(num_gpus_per_worker=-1), r"num_gpus_per_worker must be 'auto' or a finite number >= 0, got -1$"),
    (dict(num_cpus_per_worker=0), r"num_cpus_per_worker"),
    (dict(mode="federated"), r"mode must be one of gradient, model, got 'federated'$"),
    (dict(mode="model"), r"mode=model .* momentum to 0"),
    (dict(local_steps=3), r"local_steps=3 only applies with mode=model"),
    (dict(attack_knowledge=11), r"attack_knowledge must be 'all' or an integer in 0..n-f=10"),
    (dict(attack_knowledge="some"), r"attack_knowledge"),
    (dict(attack_knowledge=0), r"needs at least 1 visible honest gradient"),
    (dict(checkpoint_every=15, steps=100, eval_every=10), r"checkpoint_every=15 must be a multiple of eval_every=10"),
    (dict(workers_per_actor="many"), r"workers_per_actor must be 'auto' or an integer >= 1, got 'many'$"),
    (dict(seed=-1), r"seed must be an integer >= 0"),
    (dict(steps=2.5), r"steps must be an integer"),
    (dict(diagnostics="yes"), r"diagnostics must be true or false"),
    (dict(resampling=3, n=6, f=1, aggregator="bulyan(select=krum, agg=comed)"), r"resampling.*n >= 4f\+3"),
    (dict(worker_momentum=-0.1), r"worker_momentum must be a finite number >= 0, got -0.1$"),
    (dict(worker_momentum=1), r"worker_momentum must be a number in \[0, 1\), got 1.0$"),
    (dict(worker_momentum="high"), r"worker_momentum must be a finite number >= 0, got 'high'$"),
    (dict(assumed_f=-1), r"assumed_f must be an integer >= 0 or none, got -1$"),
    (dict(assumed_f=12), r"assumed_f must be none or an integer in 0..n-1=11, got 12$"),
    (dict(assumed_f=1.5), r"assumed_f must be an integer"),
    (dict(n=12, f=2, aggregator="krum", assumed_f=5), r"aggregator 'krum' with assumed_f=5: .*n >= 2f\+3 = 13$"),
    (dict(participation=0), r"participation must be an integer >= 1 or none, got 0$"),
    (dict(participation=2), r"participation must be none or an integer in f\+1..n=3..12 .*, got 2$"),
    (dict(participation=13), r"participation must be none or an integer in f\+1..n=3..12 .*, got 13$"),
    (dict(participation=8), r"pool 'mixtailor' cannot run with n=8, f=2: 16 of 64 members fail"),
    (dict(participation=8, aggregator="krum", assumed_f=3), r"aggregator 'krum' with assumed_f=3: .*n=8, f=3.*n >= 2f\+3 = 9$"),
    (dict(byzantine_sampling="some"), r"byzantine_sampling must be one of fixed, random, got 'some'$"),
])
def test_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**kwargs)


def test_a_missing_data_directory_is_the_preflight_s_refusal_not_the_config_s():
    """A config is values only (it travels to actors on hosts where the files may live
    elsewhere); the preflight checks the files, before any actor starts."""
    from raymix.runtime.resources import Refused, preflight

    c = ExperimentConfig(dataset="mnist", data_dir="/nonexistent/raymix-data")
    with pytest.raises(Refused, match=r"dataset 'mnist'.*not found"):
        preflight(c, {"CPU": 2.0})


def test_drop_invalid_runs_without_the_failing_members():
    c = ExperimentConfig(n=6, f=1, aggregator="mixtailor", drop_invalid=True)
    pool = c.build_pool()
    assert len(pool) == 48 and "bulyan" not in pool.families and len(pool.dropped) == 16


def test_omniscient_and_resampling_pools():
    assert ExperimentConfig(aggregator="omniscient").build_pool() is None
    pool = ExperimentConfig(n=12, f=1, aggregator="pool(members=[krum, comed])", resampling=2).build_pool()
    assert [r.spec for r in pool.rules] == ["resampling(s=2, rule=krum)", "resampling(s=2, rule=comed)"]
    assert pool.families == ("krum", "comed")


def test_mnist_config_accepted_when_present(mnist_dir):
    assert ExperimentConfig(dataset="mnist", data_dir=mnist_dir).model_name == "paper_cnn"


def test_validation_does_not_start_or_import_ray():
    code = (
        "import sys\n"
        "from raymix.config import ExperimentConfig\n"
        "ExperimentConfig(n=7, f=1, aggregator='mixtailor', attack='alie')\n"
        "try:\n    ExperimentConfig(n=6, f=1)\nexcept ValueError:\n    pass\n"
        "print('ray' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_resources_gpu_fractions_and_packing():
    c = ExperimentConfig(n=12, f=2, workers_per_actor=5)
    sizes = actor_sizes(c)
    assert sizes == [5, 5]  # the server (aggregator, adversary, first pack), the second pack
    assert actor_sizes(c.replace(attack="label_flip")) == [7, 5]  # the server trains the f Byzantine workers too
    cpu, gpu = plan_resources(c, {"CPU": 16, "GPU": 1}, sizes)
    assert gpu == pytest.approx(1 / 10) and cpu == pytest.approx(1.6)  # the GPU split over the 2 actors, then their workers
    assert resources_for(cpu, 0, 5).num_cpus == 8.0  # above one CPU: whole CPUs, rounded down
    assert plan_resources(c, {"CPU": 2}, sizes)[1] == 0.0
    assert plan_resources(c.replace(num_gpus_per_worker=0.5, num_cpus_per_worker=0.1), {"CPU": 2, "GPU": 1}, sizes) == (0.1, 0.5)
    r = resources_for(1 / 12, 1 / 12, 5)
    assert r.num_gpus == pytest.approx(0.4166, abs=1e-4) and r.num_gpus < 1
    assert resources_for(0.5, 0.5, 5).num_gpus == 3.0  # above one GPU: whole GPUs
    assert actor_groups(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_auto_packing_is_about_one_honest_actor_per_cpu_or_gpu():
    from raymix.runtime.resources import auto_workers_per_actor, preflight

    from raymix.runtime.resources import actor_threads

    assert auto_workers_per_actor(10, 2, 0) == 10 and auto_workers_per_actor(10, 4, 0) == 5  # a pack per 2 CPUs
    assert auto_workers_per_actor(10, 16, 0) == 2 and auto_workers_per_actor(10, 0.5, 0) == 10
    assert auto_workers_per_actor(10, 16, 1) == 10 and auto_workers_per_actor(10, 16, 2) == 5  # a pack per GPU
    c = preflight(ExperimentConfig(n=12, f=2), {"CPU": 2.0})
    assert c.workers_per_actor == 10 and sum(resources_for(c.num_cpus_per_worker, 0, k).num_cpus for k in actor_sizes(c)) <= 2.0
    assert actor_threads(c.num_cpus_per_worker, 10) == 2 and actor_threads(0.195, 10) == 2 and actor_threads(0.01, 1) == 1


@pytest.mark.parametrize("n,f,wpa,aggregator", [(12, 2, 1, "krum"), (12, 2, 5, "mixtailor"), (12, 4, 1, "comed"),
                                                (12, 2, 1, "omniscient"), (30, 7, 4, "comed"), (5, 0, 1, "mean")])
@pytest.mark.parametrize("cpus", [2, 3, 16])
def test_auto_cpus_fit_the_cluster_whatever_the_packing(n, f, wpa, aggregator, cpus):
    # A laptop's default (one actor per worker, the adversary holding f workers) once asked
    # for 2.17 of 2 CPUs and `raymix run` refused to start.
    c = ExperimentConfig(n=n, f=f, workers_per_actor=wpa, aggregator=aggregator, attack="ipm(epsilon=0.1)" if f else "none")
    sizes = actor_sizes(c)
    cpu_w, _ = plan_resources(c, {"CPU": cpus}, sizes)
    asked = [resources_for(cpu_w, 0.0, k).num_cpus for k in sizes]
    assert sum(asked) <= cpus + 1e-9 and min(asked) > 0


def test_cli_help_and_unknown_command():
    from raymix.cli import main

    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2
    assert main(["run", "--n", "6", "--f", "3"]) == 2  # refused before anything starts


def test_demo_subcommand_delegates_to_raymix_demo(capsys):
    from raymix.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "raymix demo" in capsys.readouterr().out


def test_the_docs_field_table_is_the_one_the_knobs_give():
    """docs/runtime.md's table is generated (``python -m raymix.config``): a field added,
    renamed or re-documented without regenerating it fails here."""
    from raymix.config import field_table

    from conftest import REPO

    docs = (REPO / "docs" / "runtime.md").read_text()
    start = docs.index("| field | default | meaning |")
    assert docs[start:docs.index("\n\n", start) + 1] == field_table(), "regenerate: python -m raymix.config"


def test_device_and_determinism_fields_and_a_resume_on_another_device_type():
    from raymix.runtime.resources import Refused
    from raymix.runtime.simulation import check_resumable

    with pytest.raises(ValueError, match="device must be one of auto, cuda, cpu, got 'tpu'"):
        ExperimentConfig(device="tpu")
    with pytest.raises(ValueError, match="deterministic must be"):
        ExperimentConfig(deterministic="yes")
    c = ExperimentConfig()
    state = {"config": c.to_dict(), "device": "cpu"}
    check_resumable(state, c, "cpu")
    check_resumable({"config": c.to_dict()}, c, "cpu")  # a checkpoint from before the field: the CPU
    with pytest.raises(Refused, match="computed on cpu and this run computes on cuda .* set device: cuda"):
        check_resumable(state, c, "cuda")  # auto would land on the GPU: asked for by nobody
    check_resumable(state, c.replace(device="cuda"), "cuda")  # asked for


ONCE = {"validations": 1, "pools": 1, "attacks": 1}


def test_a_run_validates_its_config_once_and_builds_its_pool_and_attack_once(builds, monkeypatch):
    """Issue 26.4: validation builds the 64-rule pool and the attack to check them; the
    preflight's resolved copy and everything that runs the config (server, adversary, the
    records' columns) reuse those objects. An actor receives the config pickled without
    them and builds each once."""
    import pickle

    import torch

    from raymix.runtime.actors import ServerActor
    from raymix.runtime.resources import plan
    from raymix.step import prepare, run_local

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the actor's threads: not this test process's
    cfg = ExperimentConfig(n=7, f=1, model="mlp", aggregator="mixtailor", attack="ipm(epsilon=0.1)", steps=2, eval_every=1,
                           batch_size=8)
    p = plan(cfg, {"CPU": 2.0})  # the preflight resolves workers_per_actor and the CPU share: a copy of cfg
    assert p.config.workers_per_actor == 6 and p.config.build_pool() is cfg.build_pool()
    assert len(run_local(p.config).records) == 2 and dict(builds) == ONCE
    builds.clear()
    shipped = pickle.loads(pickle.dumps(p.config))
    assert shipped == p.config and "_built" not in vars(shipped)
    inputs = prepare(shipped)
    ServerActor(shipped, inputs.init_weights, inputs.model, inputs.test, list(p.groups[0]), inputs.honest_shards, None, inputs.norm)
    assert dict(builds) == {"pools": 1, "attacks": 1}


def test_replace_rebuilds_nothing_for_placement_fields_and_still_checks_them(builds):
    c = ExperimentConfig(n=7, f=1)
    moved = c.replace(workers_per_actor=2, num_cpus_per_worker=0.5, num_gpus_per_worker=0.0, data_dir="/data")
    assert moved.build_pool() is c.build_pool() and moved.build_attack() is c.build_attack() and dict(builds) == ONCE
    assert moved == ExperimentConfig(n=7, f=1, workers_per_actor=2, num_cpus_per_worker=0.5, num_gpus_per_worker=0.0, data_dir="/data")
    builds.clear()
    with pytest.raises(ValueError, match="num_cpus_per_worker must be 'auto' or a finite number > 0, got 0"):
        c.replace(num_cpus_per_worker=0)
    with pytest.raises(TypeError, match="bogus"):
        c.replace(bogus=1)
    assert not builds  # the refused copies
    other = c.replace(n=9)  # the pool's n: validated and built again
    assert other.build_pool() is not c.build_pool() and dict(builds) == ONCE
