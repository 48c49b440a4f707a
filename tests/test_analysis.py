"""Analysis: the loader, the plots, ``raymix report`` and the notebooks, on a real sweep."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas", reason="the analysis extra (pandas) is not installed")
plt = pytest.importorskip("matplotlib.pyplot", reason="the analysis extra (matplotlib) is not installed")

from raymix.analysis import final_records, load_results  # noqa: E402
from raymix.analysis import plots  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def results(small_sweep):
    return load_results(small_sweep["root"])


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_loader_gives_one_row_per_trial_and_evaluation(results, small_sweep):
    cfg = small_sweep["config"]
    evals = cfg["steps"] // cfg["eval_every"]
    assert results["trial"].nunique() == 2
    assert len(results) == 2 * evals  # retried/resumed reports de-duplicated by step
    assert sorted(results["aggregator"].unique()) == ["krum", "mixtailor"]
    for col in ("attack", "attack_name", "epsilon", "seed", "f", "n", "step", "test_accuracy", "train_loss", "cosine", "pool"):
        assert col in results.columns, col
    assert set(results["attack_name"]) == {"ipm"} and set(results["epsilon"]) == {0.1}
    assert set(results["f"]) == {1} and set(results["n"]) == {7}
    assert results.loc[results["aggregator"] == "mixtailor", "pool"].unique().tolist() == ["full"]
    fam = [c for c in results.columns if c.startswith("drawn_family")]
    assert fam, results.columns
    per_trial = results.groupby("trial")["step"].apply(list)
    assert all(steps == list(range(cfg["eval_every"], cfg["steps"] + 1, cfg["eval_every"])) for steps in per_trial)
    fin = final_records(results)
    assert len(fin) == 2 and set(fin["step"]) == {cfg["steps"]}


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_loader_reads_a_copied_directory_without_ray(small_sweep, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(small_sweep["root"], copy)
    code = (
        "import sys, json; from raymix.analysis import load_results; df = load_results(sys.argv[1]);"
        "print(json.dumps([len(df), df['trial'].nunique(), 'ray' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, check=True)
    rows, trials, ray_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert trials == 2 and rows > 0 and ray_loaded is False


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_loader_tolerates_a_half_written_line(small_sweep, tmp_path):
    copy = tmp_path / "running"
    shutil.copytree(small_sweep["root"], copy)
    some = next(copy.rglob("records.jsonl"))
    with open(some, "a") as fh:
        fh.write('{"step": 99, "test_acc')  # a trial still writing
    df = load_results(copy)
    assert 99 not in set(df["step"])


def _image_has_content(path: Path) -> None:
    img = plt.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    # Not a blank canvas: many distinct colours (lines, bands, text).
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_plots_render_from_real_results(results, tmp_path):
    for name, fn in [
        ("accuracy", plots.accuracy_curves),
        ("ablation", plots.ablation_bars),
        ("drawn", plots.drawn_classes),
        ("fooled", plots.fooled_fraction),
    ]:
        fig = fn(results, out=tmp_path / name)
        plt.close(fig)
        assert (tmp_path / f"{name}.svg").stat().st_size > 1000
        _image_has_content(tmp_path / f"{name}.png")
    table = plots.summary_table(results)
    assert set(table["aggregator"]) == {"krum", "mixtailor"}
    assert {"final_mean", "best_mean", "seeds", "steps"} <= set(table.columns)
    assert (table["best_mean"] >= table["final_mean"] - 1e-9).all()
    # Proposition 1's quantities per configuration: the fooled share and the norm-weighted
    # expected inner product, the mean over the trial's evaluations of what the records hold
    mt = results[results.aggregator == "mixtailor"]
    row = table.set_index("aggregator").loc["mixtailor"]
    assert row["expected_inner_product_mean"] == pytest.approx(mt["diag_expected_inner_product"].mean())
    assert row["fooled_fraction_mean"] == pytest.approx(mt["diag_fooled_fraction"].mean())


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_drawn_classes_counts_match_the_pool(results):
    mt = results[results["aggregator"] == "mixtailor"]
    fam = [c for c in mt.columns if c.startswith("drawn_family.")]
    assert mt[fam].fillna(0).sum(axis=1).eq(2).all()  # eval_every = 2 draws per record
    kr = results[results["aggregator"] == "krum"]
    assert kr["drawn_family.krum"].eq(2).all()


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_report_end_to_end(small_sweep, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "raymix", "report", str(small_sweep["root"]), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert "## Summary" in md and "| krum |" in md.replace("| ipm(epsilon=0.1) ", "| ")
    # The report says what was run: the shared settings, what varied, nothing machine-bound.
    shared = next(line for line in md.splitlines() if line.startswith("Shared by every trial"))
    assert "`n=7`" in shared and "`f=1`" in shared and "`dataset=" in shared and "data_dir" not in shared
    assert "Varied: `aggregator`." in md
    for name in ("accuracy", "drawn_classes", "fooled"):
        assert f"({name}.png)" in md
        _image_has_content(out / f"{name}.png")
        assert (out / f"{name}.svg").exists()
    assert (out / "summary.csv").exists()


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
@pytest.mark.parametrize("notebook", ["paper_figures.ipynb", "ablation.ipynb"])
def test_notebooks_run_headless(notebook, small_sweep, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = REPO / "analysis" / notebook
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks with outputs cleared"
    monkeypatch.setenv("RAYMIX_SWEEP_DIR", str(small_sweep["root"]))
    monkeypatch.setenv("RAYMIX_FIGURE_DIR", str(tmp_path))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert list(tmp_path.glob("*.png")), "the notebook drew no figure"


def test_fluctuation_measures_the_settled_curves_step_to_step_changes():
    """The paper's remark (MixTailor's curves fluctuate less) made a number: the std of the
    changes between consecutive evaluations over the second half of the steps, in points."""
    import numpy as np
    import pandas as pd

    from raymix.analysis.plots import fluctuation, summary_table

    steps = list(range(100, 1100, 100))
    zigzag = [0.5 + 0.01 * i for i in range(5)] + [0.9, 0.92, 0.9, 0.92, 0.9]  # late: +2, -2, +2, -2 points
    df = pd.DataFrame(
        [{"trial": "a", "aggregator": "mixtailor", "attack": "x", "step": s, "test_accuracy": 0.9} for s in steps]
        + [{"trial": "b", "aggregator": "krum", "attack": "x", "step": s, "test_accuracy": z} for s, z in zip(steps, zigzag)])
    f = fluctuation(df)
    assert f["a"] == 0.0 and f["b"] == pytest.approx(np.std([0.02, -0.02, 0.02, -0.02], ddof=1))  # the early rise is left out
    table = summary_table(df).set_index("aggregator")
    assert table.loc["krum", "fluctuation_mean"] == pytest.approx(100 * f["b"]) and table.loc["mixtailor", "fluctuation_mean"] == 0.0


def test_gap_curves_subtract_at_the_same_step_and_seed(tmp_path):
    """The figure of MixTailor's gap to omniscient against steps: omniscient's accuracy minus
    the aggregator's, step by step and seed by seed; refused without an omniscient trial."""
    import pandas as pd

    from raymix.analysis.plots import gap_curves

    rows = [{"trial": f"{a}{seed}", "aggregator": a, "attack": "x", "seed": seed, "step": s, "test_accuracy": acc}
            for seed in (0, 1) for s in (100, 200)
            for a, acc in (("omniscient", 0.9 + 0.01 * seed), ("mixtailor", 0.8 + 0.01 * seed + (0.05 if s == 200 else 0)))]
    fig = gap_curves(pd.DataFrame(rows), out=tmp_path / "gap")
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [100, 200] and list(line.get_ydata()) == pytest.approx([10.0, 5.0])
    assert (tmp_path / "gap.png").exists()
    with pytest.raises(ValueError, match="no omniscient"):
        gap_curves(pd.DataFrame([r for r in rows if r["aggregator"] != "omniscient"]))


def test_repair_records_restores_the_rows_a_resume_dropped_from_result_json(tmp_path):
    """analysis/repair_records.py: the evaluations missing from records.jsonl come back from
    Tune's result.json, in step order, NaN as null; the old files are kept as .bak; a trial
    whose two files disagree on a shared step is left alone."""
    import importlib.util
    import json
    import math

    from raymix.config import ExperimentConfig
    from raymix.records import RecordWriter, columns, read_records

    spec = importlib.util.spec_from_file_location("repair_records", Path(__file__).parent.parent / "analysis" / "repair_records.py")
    repair = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repair)

    params = {"dataset": "synthetic", "model": "mlp", "n": 7, "f": 1, "aggregator": "krum", "steps": 6, "eval_every": 2}
    rows = [{"step": s, "test_accuracy": 0.1 * s, "test_loss": 1.0 / s, "cosine": math.nan if s == 2 else 0.5} for s in (2, 4, 6)]

    def trial(name, kept, tune_rows):
        d = tmp_path / "sweep" / name
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps(params))
        (d / "result.json").write_text("".join(json.dumps({**r, "time_total_s": 1.0, "pid": 7}) + "\n" for r in tune_rows))
        cfg = ExperimentConfig.from_dict(params)
        w = RecordWriter(d / "raymix", columns(cfg.build_pool(), cfg.diagnostics))
        for r in kept:
            w.append(r)
        w.close()
        return d

    dropped = trial("a", rows[2:], rows[:2] + rows[1:])  # the resume re-reported step 4: a repeat
    clash = trial("b", [{**rows[2], "test_accuracy": 0.9}], rows)
    assert repair.main([str(tmp_path / "sweep")]) == 0 and len(read_records(dropped / "raymix")) == 1  # report only
    repair.main([str(tmp_path / "sweep"), "--write"])
    got = read_records(dropped / "raymix")
    assert [r["step"] for r in got] == [2, 4, 6] and got[0]["cosine"] is None and got[1]["test_accuracy"] == 0.4
    assert len(read_records(dropped / "raymix" / "records.jsonl.bak")) == 1
    assert (dropped / "raymix" / "progress.csv").read_text().count("\n") == 4  # header and three rows
    assert [r["step"] for r in read_records(clash / "raymix")] == [6]  # left alone


def test_a_sweep_over_seeds_only_is_one_row_of_the_summary():
    """Issue 22: `raymix report` refused a sweep whose only axis is the seed ("No group keys
    passed!"): with no attack or aggregator to group by, every trial is one configuration."""
    import pandas as pd

    from raymix.analysis.plots import summary_table

    df = pd.DataFrame([{"trial": f"t{seed}", "seed": seed, "step": s, "test_accuracy": 0.5 + 0.1 * seed + s / 1000}
                       for seed in (0, 1, 2) for s in (100, 200)])
    table = summary_table(df)
    assert len(table) == 1 and table.loc[0, "seeds"] == 3 and table.loc[0, "steps"] == 200
    assert table.loc[0, "final_mean"] == pytest.approx(100 * sum(0.5 + 0.1 * seed + 0.2 for seed in (0, 1, 2)) / 3)


def test_the_long_run_summary_is_computed_from_the_records_it_publishes(tmp_path):
    """analysis/pool_aware_long.py: the published records are the trial's, the attacker's
    choice filled from Tune's result.json where records.jsonl lacks it, and the table's
    numbers follow from them (accuracy in %, the lambda shares, the omniscient reference)."""
    import gzip
    import importlib.util

    spec = importlib.util.spec_from_file_location("pool_aware_long", REPO / "analysis" / "pool_aware_long.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def trial(sweep, name, cfg, recs, tune_rows=()):
        d = tmp_path / sweep / f"SimulationTrainable_ab_{name}_x"
        (d / "raymix").mkdir(parents=True)
        (d / "params.json").write_text(json.dumps(cfg))
        (d / "raymix" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 9')  # a cut last line
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in tune_rows))

    cfg = {"aggregator": "mixtailor(composition=full)", "attack": "pool_aware(grid=[0.1, 1, 10], refine=0)", "seed": 0, "steps": 400}
    recs = [{"step": 100 * i, "test_accuracy": a, "diag_expected_inner_product": 0.1 * i, "diag_fooled_fraction": 0.25}
            for i, a in enumerate((0.2, 0.85, 0.9, 0.95), start=1)]
    lams = (0.1, 1.0, 1.0, 10.0)
    trial("pa", "00000", cfg, recs, [{"step": r["step"], "attack": {"lambda": l, "expected": -0.5, "worst": 0.1, "fooled": 0.5}}
                                     for r, l in zip(recs, lams)])
    trial("ref", "00000", {"aggregator": "omniscient", "attack": "none", "seed": 0, "steps": 400},
          [{"step": 100 * i, "test_accuracy": 0.97} for i in range(1, 5)])
    out = tmp_path / "docs"
    assert mod.main(["--sweep", str(tmp_path / "pa"), "--reference", str(tmp_path / "ref"), "--commit", "abc1234", "--out", str(out)]) == 0
    published = [json.loads(x) for x in gzip.open(out / "records" / "pa__00000_seed0.jsonl.gz", "rt")]
    assert [r["step"] for r in published] == [100, 200, 300, 400] and [r["attack"]["lambda"] for r in published] == list(lams)
    assert json.loads((out / "records" / "pa__00000_seed0.json").read_text())["commit"] == "abc1234"
    text = (out / "summary.md").read_text()
    row = next(x for x in text.splitlines() if x.startswith("| mixtailor(composition=full) / expected / seed 0 | 400 of 400"))
    assert "| 95.0 | 72.5 | 97.0 | 20.0 (100) | 200 |" in row  # final, mean of all 4 (< 10 evals), omniscient, lowest, first >= 80%
    row2 = [x for x in text.splitlines() if x.startswith("| mixtailor(composition=full) / expected / seed 0 |")][1]
    assert "| 0.50 / 0.50 / 0.00 | 0.00 / 0.50 / 0.50 | -0.500 | 0.100 | 0.50 | 0.250 | 0.25 |" in row2  # shares, expected, worst, fooled
    # gaps 77, 12, 7, 2 points: never below 2 (the last is not); at 1,000 / 5,000 / 10,000 not evaluated
    row3 = [x for x in text.splitlines() if x.startswith("| mixtailor(composition=full) / expected / seed 0 |")][2]
    assert row3 == "| mixtailor(composition=full) / expected / seed 0 | 4 evals, to step 400 | n/a / n/a / n/a | 24.5 | never |"
    assert "result.json" in text.strip().splitlines()[-1]
    # a continuous search: the chosen lambdas' median and 10th-90th percentiles per half; the
    # reference published with its own commit, and said so
    trial("pb", "00000", {**cfg, "attack": "pool_aware(objective=worst)"},
          [{**r, "attack": {"lambda": lam, "expected": -0.5, "worst": 0.1, "fooled": 0.5}} for r, lam in zip(recs, (0.5, 1.2, 2.0, 3.0))])
    out2 = tmp_path / "docs2"
    assert mod.main(["--sweep", str(tmp_path / "pb"), "--reference", str(tmp_path / "ref"), "--commit", "abc1234",
                     "--reference-commit", "def5678", "--out", str(out2)]) == 0
    text2 = (out2 / "summary.md").read_text()
    assert "| chosen lambda: median (10th-90th percentile), first half |" in text2
    assert "| mixtailor(composition=full) / worst (P3) / seed 0 | 0.850 (0.570-1.13) | 2.50 (2.10-2.90) | -0.500 | 0.100 |" in text2
    assert json.loads((out2 / "records" / "ref__00000_seed0.json").read_text())["commit"] == "def5678"
    assert "the omniscient reference at `def5678`" in text2 and (out2 / "attacker.png").exists()
    assert mod.load_published(out2)[1::4] == ("abc1234", "def5678")
    # a reference carried across machines (runs/carry.py's layout): a raymix run directory per
    # trial, and carry.json's pieces saying which steps ran where (one span per machine: two
    # sessions in a row on the same kind of machine read as one); the summary says it too
    carried = tmp_path / "carried_ref"
    (carried / "seed-0").mkdir(parents=True)
    (carried / "seed-0" / "config.json").write_text(json.dumps({"aggregator": "omniscient", "attack": "none", "seed": 0,
                                                                 "steps": 400, "output_dir": "/elsewhere"}))
    (carried / "seed-0" / "records.jsonl").write_text("".join(json.dumps({"step": 100 * i, "test_accuracy": 0.96}) + "\n"
                                                              for i in range(1, 5)))
    box = {"cpu": "Some CPU", "isa": "avx2", "cores": 2, "torch": "2.9"}
    (carried / "carry.json").write_text(json.dumps({"pieces": [
        {"machine": box, "steps": {"seed-0": [0, 100]}}, {"machine": box, "steps": {"seed-0": [100, 200]}},
        {"machine": {**box, "isa": "avx512f"}, "steps": {"seed-0": [200, 400]}}]}))
    out3 = tmp_path / "docs3"
    assert mod.main(["--sweep", str(tmp_path / "pb"), "--reference", str(carried), "--commit", "abc1234",
                     "--machine", "the trials' box", "--out", str(out3)]) == 0
    ref_meta = json.loads((out3 / "records" / "carried_ref__seed-0.json").read_text())
    assert "output_dir" not in ref_meta["config"] and ref_meta["machine"] == (
        "steps 0-200 on 2-core Some CPU (avx2, torch 2.9); steps 200-400 on 2-core Some CPU (avx512f, torch 2.9)")
    text3 = (out3 / "summary.md").read_text()
    assert f"Where they ran (the trials: the trials' box; the reference: {ref_meta['machine']})" in text3
    assert "| mixtailor(composition=full) / worst (P3) / seed 0 | 400 of 400 | 95.0 | 72.5 | 96.0 |" in text3
    assert mod.load_published(out3)[6] == {"trials": {"the trials' box": {"mixtailor(composition=full) / worst (P3) / seed 0"}},
                                           "reference": {ref_meta["machine"]: {"omniscient / none / seed 0"}}}
    # a fixed attack (IPM: no choice recorded) lengthened to 50,000 steps, carried: no attacker
    # table or figure; the gap at every 10,000 steps up to the configured length ("n/a" where
    # not run yet), the plan's length (carry.json), not the first length config.json kept
    ipm = tmp_path / "ipm_long"
    (ipm / "seed-0").mkdir(parents=True)
    (ipm / "seed-0" / "config.json").write_text(json.dumps({"aggregator": "mixtailor", "attack": "ipm(epsilon=0.1)", "seed": 0, "steps": 10000}))
    (ipm / "seed-0" / "records.jsonl").write_text("".join(json.dumps({"step": s, "test_accuracy": 0.9}) + "\n" for s in (10000, 20000)))
    (ipm / "carry.json").write_text(json.dumps({"pieces": [], "trials": [
        {"name": "seed-0", "config": {"aggregator": "mixtailor", "attack": "ipm(epsilon=0.1)", "seed": 0, "steps": 50000}}]}))
    (carried / "seed-0" / "records.jsonl").write_text("".join(json.dumps({"step": s, "test_accuracy": 0.97}) + "\n"
                                                              for s in (10000, 20000, 30000)))
    out4 = tmp_path / "docs4"
    assert mod.main(["--sweep", str(ipm), "--reference", str(carried), "--commit", "abc1234", "--out", str(out4)]) == 0
    text4 = (out4 / "summary.md").read_text()
    assert text4.startswith("# At length, against omniscient: `ipm_long`")
    assert "attacker" not in text4 and not (out4 / "attacker.png").exists()
    assert "| mixtailor / ipm(epsilon=0.1) / seed 0 | 20,000 of 50,000 | 90.0 |" in text4
    assert "| gap at 1,000 / 5,000 / 10,000 / 20,000 / 30,000 / 40,000 / 50,000 |" in text4
    assert "| mixtailor / ipm(epsilon=0.1) / seed 0 | 2 evals, to step 20,000 | n/a / n/a / 7.0 / 7.0 / n/a / n/a / n/a | 7.0 | never |" in text4


def test_a_pool_listing_its_members_is_published_and_read_by_its_short_name(tmp_path, capsys):
    """pool_aware_long.py --name: a pool spec of 17 members is called by its short name in the
    tables and the where-it-ran line, the spec said once beside it; the name is published with
    the records (the config stays what ran), so --from-published and the readings
    (``name=NAME``) find it; a malformed name or one for a spec no trial ran is a one-line
    error before anything is written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pool_aware_long", REPO / "analysis" / "pool_aware_long.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.path.insert(0, str(REPO / "analysis"))
    import readings

    pool = "pool(members=[" + ", ".join(["geomed(p=1)", "comed"] + [f"bulyan(select=krum, agg=mean, p={p})" for p in range(15)]) + "])"
    sweep = tmp_path / "pools"
    for agg, tag in ((pool, "long"), ("mixtailor", "paper")):
        d = sweep / f"{tag}__seed-0"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"aggregator": agg, "attack": "pool_aware(objective=worst)", "seed": 0, "steps": 200}))
        (d / "records.jsonl").write_text("".join(json.dumps({"step": s, "test_accuracy": a, "attack": {"lambda": 1.0, "expected": e, "worst": 0.5, "fooled": 0.2}}) + "\n"
                                                 for s, a, e in ((100, 0.5, -0.1), (200, 0.9 if tag == "long" else 0.3, 0.3))))
    box = {"cpu": "A", "isa": "avx2", "cores": 2, "torch": "2.9"}
    (sweep / "carry.json").write_text(json.dumps({"pieces": [{"machine": box, "steps": {"long__seed-0": [0, 200]}},  # two hosts: each trial said by its label
                                                             {"machine": {**box, "isa": "avx512f"}, "steps": {"paper__seed-0": [0, 200]}}]}))
    docs = tmp_path / "docs" / "pools_out"
    assert mod.main(["--sweep", str(sweep), "--commit", "abc1234", "--out", str(docs), "--name", f"least_fooled={pool}"]) == 0
    text = (docs / "summary.md").read_text()
    assert f"The rules named here: `least_fooled` is `{pool}`." in text
    assert "| least_fooled / worst (P3) / seed 0 | 200 of 200 | 90.0 |" in text and "| mixtailor / worst (P3) / seed 0 | 200 of 200 | 30.0 |" in text
    assert pool not in text.replace(f"`least_fooled` is `{pool}`", "")  # the spec said once, the name everywhere else
    meta = json.loads((docs / "records" / "pools__long__seed-0.json").read_text())
    assert meta["name"] == "least_fooled" and "name" not in meta["config"] and meta["config"]["aggregator"] == pool
    assert "least_fooled / worst (P3) / seed 0" in str(mod.load_published(docs)[6]) and "Where they ran (the trials: least_fooled / worst (P3) / seed 0: steps 0-200 on 2-core A (avx2" in text
    again = tmp_path / "again"
    again.mkdir()
    mod.write_summary(again, *[mod.load_published(docs)[i] for i in (0, 1, 2, 3, 4, 5, 6)])
    assert (again / "summary.md").read_text() == text
    assert readings.reading("pools_out test_accuracy name=least_fooled step=200 %", tmp_path / "docs") == "90.0"
    assert readings.reading("pools_out attack.expected name=least_fooled .2f", tmp_path / "docs") == "0.10"
    for bad, says in ((["--name", "least fooled=" + pool], "give NAME=SPEC"), (["--name", "x=krum"], "no trial of"),
                      (["--name", f"a={pool}", "--name", f"b={pool}"], "each name and each spec once")):
        with pytest.raises(SystemExit) as err:
            mod.main(["--sweep", str(sweep), "--commit", "abc1234", "--out", str(tmp_path / "never"), *bad])
        assert says in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "never").exists()


def test_figures_name_their_setting_and_keep_legends_off_the_curves(tmp_path):
    """Issue 24's figure rules: every figure's title names the attack, f and the steps; the
    legend sits outside every panel (it covers no curve); the ablation's axis spans the bars'
    range (the effect under test is a few points), not 0-100, and says so."""
    import pandas as pd

    rows = [{"trial": f"{pool}{seed}{eps}", "aggregator": f"mixtailor(composition={pool})", "attack": f"ipm(epsilon={eps})",
             "n": 12, "f": 2, "steps": 1500, "seed": seed, "step": s,
             "test_accuracy": 0.85 + 0.01 * i + 0.005 * seed + (0.02 if eps == 10 else 0) + 0.00002 * s}
            for i, pool in enumerate(("full", "no_bulyan", "no_krum")) for seed in (0, 1) for eps in (0.1, 10) for s in (500, 1000, 1500)]
    df = pd.DataFrame(rows)
    df["pool"] = df["aggregator"].map(plots.pool_of)
    for name, fn, frame in (("accuracy", plots.accuracy_curves, df), ("ablation", plots.ablation_bars, df),
                            ("one_attack", plots.accuracy_curves, df[df["attack"] == "ipm(epsilon=10)"])):
        fig = fn(frame, out=tmp_path / name)
        fig.canvas.draw()
        texts = " ".join([fig._suptitle.get_text()] + [ax.get_title() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes])
        assert "f = 2" in texts and "1,500 steps" in texts, texts
        named = texts + " ".join(t.get_text() for t in fig.legends[0].get_texts())
        assert "ipm(epsilon=10)" in named  # the attack: the figure's title, a panel's, or a bar group's
        legend = fig.legends[0].get_window_extent()
        for ax in fig.axes:
            assert not legend.overlaps(ax.get_window_extent()), name
        plt.close(fig)
    fig = plots.ablation_bars(df)
    lo, hi = fig.axes[0].get_ylim()
    finals = 100 * df[df["step"] == 1500]["test_accuracy"]
    assert 80 < lo < finals.min() and finals.max() < hi < 100  # scaled to the effect, not from 0
    assert f"axis {lo:g}-{hi:g}" in fig.axes[0].get_ylabel()
    plt.close(fig)
