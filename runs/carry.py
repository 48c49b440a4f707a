"""Long runs carried across machines through this repository.

A machine of this project lasts one session (three hours) and the next session may get a new
one, so a run longer than a session survives only in what is committed. This script runs a
sweep file's trials as ``raymix run`` processes from a frozen ``git worktree`` at a commit, and
packs each trial's latest checkpoint (the one format: ``state.pt`` read with
``weights_only=True``, so a carried file cannot run code), its records and its config into
``runs/NAME/``. A later session, on any machine, continues every trial from there with
``raymix run --resume`` (``output_dir`` and ``data_dir`` may change on resume; what the run
computes may not, ``check_resumable``).

    python runs/carry.py start NAME tune_configs/X.yaml [--commit REV] [--parallel K]
    python runs/carry.py status NAME
    python runs/carry.py pack NAME        # then commit runs/NAME
    python runs/carry.py stop NAME        # SIGINT: each trial stops at its last checkpoint
    python runs/carry.py continue NAME    # a later session, on this or another machine

The same seed gives the same records on the same machine and thread count; another
instruction set rounds differently. ``carry.json`` therefore lists each piece of each trial
(its steps, the machine, torch, the commit), and what is published from a carried run says
where a piece ran elsewhere. Worktrees live in ``RAYMIX_RUNS`` (default: ``runs`` beside the
checkout), outside the repository, each with its own virtual environment.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CARRIED = REPO / "runs"  # runs/NAME/carry.json and runs/NAME/<trial>/ (committed)
WORK = Path(os.environ.get("RAYMIX_RUNS") or REPO.parent / "runs")  # worktrees and live output (not committed)


class Refused(Exception):
    """A one-line refusal: printed without a traceback."""


# ---------------------------------------------------------------------------- the plan
def trials_of(sweep_file: Path) -> list[dict]:
    """The sweep file's grid points as ``[{"name", "config"}]``: the name is the point's search
    values (``seed-0__attack-pool_aware``), the config the whole experiment ``raymix run`` is given."""
    from raymix.sweep import expand_grid

    sweep = _load_sweep(sweep_file)
    if sweep.search_alg or sweep.scheduler or sweep.worst_case or int(sweep.run.get("num_samples", 1)) != 1:
        raise Refused(f"{sweep_file}: only grid sweeps are carried (no search_alg, scheduler, worst_case or num_samples)")
    trials = []
    for point in expand_grid(sweep.experiment, sweep.search):
        # plain: [A-Za-z0-9_.-], each part's own ends stripped (a spec's closing parenthesis)
        name = "__".join(_short(re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{k}-{_flat(point, k)}").strip("_")) for k in sweep.search) or "trial"
        trials.append({"name": name, "config": point})
    if len({t["name"] for t in trials}) != len(trials):
        raise Refused(f"{sweep_file}: two grid points have the same name")
    return trials


PART = 64  # longest part of a trial's name kept whole: a file name may not pass 255 bytes


def _short(part: str) -> str:
    """A name part as it is, or, past PART characters (a pool listing its members), its start
    and a hash of the whole: still one name per grid point, and a file name the disk accepts."""
    if len(part) <= PART:
        return part
    return f"{part[:PART - 13]}-{hashlib.sha256(part.encode()).hexdigest()[:12]}"


def _load_sweep(sweep_file: Path):
    """The sweep file, read by the raymix of the worktree it lies in (not this checkout's)."""
    sys.path.insert(0, str(sweep_file.parents[1]))
    from raymix.sweep import load_sweep

    return load_sweep(sweep_file)


def _flat(point: dict, key: str):
    name, _, arg = key.partition(".")
    return point[name][arg] if arg else point[key]


def machine(wt: Path) -> dict:
    """What the records' rounding depends on: the CPU and its widest vector set, torch (the
    worktree's), the cores."""
    flags = model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    isa = next((s for s in ("avx512f", "avx2", "avx") if f" {s} " in f" {flags} "), platform.machine())
    torch = subprocess.run([str(wt / ".venv" / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": model or platform.processor(), "isa": isa, "cores": os.cpu_count(), "torch": torch or "unknown"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(name: str) -> dict:
    path = CARRIED / name / "carry.json"
    if not path.exists():
        raise Refused(f"no carried run {name!r}: {path} does not exist")
    return json.loads(path.read_text())


def _write(plan: dict) -> None:
    path = CARRIED / plan["name"] / "carry.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan, indent=1) + "\n")
    os.replace(tmp, path)


def worktree(plan: dict) -> Path:
    return WORK / f"{plan['name']}_{plan['commit'][:7]}"


def output_dir(plan: dict, trial: str) -> Path:
    return worktree(plan) / "results" / plan["name"] / trial


# ---------------------------------------------------------------------------- the worktree
def ensure_worktree(plan: dict) -> Path:
    """The frozen worktree at the plan's commit with its own environment (``make`` installs it)."""
    wt = worktree(plan)
    if not (wt / ".git").exists():
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(wt), plan["commit"]], check=True)
    head = subprocess.run(["git", "-C", str(wt), "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    if head != plan["commit"]:
        raise Refused(f"{wt} is at {head[:7]}, not at the run's commit {plan['commit'][:7]}: move it away")
    (wt / "results").mkdir(exist_ok=True)
    with open(wt / "results" / "install.log", "a") as log:  # pip's own lines: kept, not shown
        if subprocess.run(["make", "-s", ".venv/.installed"], cwd=wt, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise Refused(f"the worktree's environment did not install: see {wt / 'results' / 'install.log'}")
    return wt


# ---------------------------------------------------------------------------- pack, unpack
def latest(out: Path) -> "tuple[Path, dict] | None":
    """The newest checkpoint directory under a run's ``out`` (raymix's own choice of it) and its ``meta.json``."""
    from raymix.runtime.checkpoint import latest_checkpoint

    found = latest_checkpoint(out)
    return (found, json.loads((found / "meta.json").read_text())) if found else None


def pack_trial(out: Path, dest: Path) -> dict:
    """Copy a ``raymix run`` directory's latest checkpoint, the records it counts and the config
    into ``dest`` (replacing what was carried before). Returns the carried step and files' digest."""
    found = latest(out)
    if found is None:
        raise Refused(f"{out} holds no checkpoint yet: nothing to carry")
    ckpt, meta = found
    records = (out / "records.jsonl").read_text().splitlines()[: int(meta["records"])]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoint").mkdir(parents=True)
    for f in ("state.pt", "meta.json"):
        shutil.copy2(ckpt / f, tmp / "checkpoint" / f)
    (tmp / "records.jsonl").write_text("".join(r + "\n" for r in records))
    shutil.copy2(out / "config.json", tmp / "config.json")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return {"step": int(meta["step"]), "records": len(records), "sha256": _sha256(dest / "checkpoint" / "state.pt")}


def unpack_trial(src: Path, out: Path, sha256: str) -> int:
    """Lay a carried trial out as a ``raymix run`` directory that ``--resume`` continues."""
    state = src / "checkpoint" / "state.pt"
    if _sha256(state) != sha256:
        raise Refused(f"{state} is not the file carry.json names (sha256 differs): not resumed")
    meta = json.loads((src / "checkpoint" / "meta.json").read_text())
    ckpt = out / "checkpoints" / f"step_{int(meta['step']):06d}"
    ckpt.mkdir(parents=True)
    for f in ("state.pt", "meta.json"):
        shutil.copy2(src / "checkpoint" / f, ckpt / f)
    for f in ("records.jsonl", "config.json"):
        shutil.copy2(src / f, out / f)
    return int(meta["step"])


# ---------------------------------------------------------------------------- commands
def start(name: str, sweep_file: str, commit: str, parallel: int, steps: "int | None" = None,
          tune_dir: "Path | None" = None) -> None:
    """A new carried run: ``steps`` replaces the sweep file's; ``tune_dir`` (a Tune sweep of the
    same file at the same commit, or a carried run of them, ``runs/NAME``) gives each trial the
    state its Tune or carried trial reached."""
    if (CARRIED / name).exists():
        raise Refused(f"runs/{name} exists: continue it, or choose another name")
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    plan = {"name": name, "sweep": sweep_file, "commit": sha, "parallel": parallel, "trials": [], "carried": {}, "pieces": []}
    source = _carried_source(tune_dir, plan) if tune_dir is not None and (tune_dir / "carry.json").exists() else None
    wt = ensure_worktree(plan)
    plan["trials"] = trials_of(wt / sweep_file)
    if source is not None:  # before any trial is copied: a refused start leaves no runs/NAME behind
        _all_carried(tune_dir, source, [t["name"] for t in plan["trials"]])
    for t in plan["trials"]:
        t["config"]["steps"] = steps or t["config"]["steps"]
        if source is not None:
            step = from_carried(tune_dir, source, t["name"], plan)
            print(f"{t['name']}: from runs/{source['name']}'s carried state at step {step}")
        elif tune_dir is not None:
            step = from_tune_trial(tune_trial(tune_dir, t["config"], wt / sweep_file), output_dir(plan, t["name"]))
            print(f"{t['name']}: from its Tune trial's checkpoint at step {step}")
    _write(plan)
    _launch(plan)


def _carried_source(source: Path, plan: dict) -> dict:
    """The plan of the carried run a new one lengthens: the same sweep file at the same commit
    (else its states are not this run's)."""
    found = json.loads((source / "carry.json").read_text())
    if (found["sweep"], found["commit"]) != (plan["sweep"], plan["commit"]):
        raise Refused(f"{source} is {found['sweep']} at {found['commit'][:7]}, not {plan['sweep']} at "
                      f"{plan['commit'][:7]}: a run continues only the same trials at the same commit")
    plan["pieces"] = list(found["pieces"])  # the steps already run, and where: the new run's own history
    return found


def _all_carried(source: Path, found: dict, trials: "list[str]") -> None:
    """Every trial of the new run is carried by the run it lengthens."""
    missing = [name for name in trials if name not in found["carried"]]
    if missing:
        raise Refused(f"{source} carries no trial {missing[0]!r}")


def from_carried(source: Path, found: dict, trial: str, plan: dict) -> int:
    """Start ``trial`` from its state in the carried run at ``source`` (checked against that run's
    carry.json), carried here from the start so that ``continue`` works before the first pack."""
    carried = found["carried"][trial]
    step = unpack_trial(source / trial, output_dir(plan, trial), carried["sha256"])
    shutil.copytree(source / trial, CARRIED / plan["name"] / trial)
    plan["carried"][trial] = {k: v for k, v in carried.items() if k != "done"}
    return step


def tune_trial(tune_dir: Path, config: dict, sweep_file: Path) -> Path:
    """The trial directory of ``tune_dir`` whose search values are ``config``'s."""
    keys = list(_load_sweep(sweep_file).search)
    found = [p.parent for p in sorted(tune_dir.glob("*/params.json"))
             if all(json.loads(p.read_text()).get(k) == config.get(k) for k in keys)]
    if len(found) != 1:
        raise Refused(f"{tune_dir}: {len(found)} Tune trials have the search values "
                      f"{ {k: config.get(k) for k in keys} } (one expected)")
    return found[0]


def from_tune_trial(trial: Path, out: Path) -> int:
    """Lay a Tune trial's last checkpoint and the records up to it out as a ``raymix run``
    directory that ``--resume`` continues. A Tune checkpoint does not count the records (Tune
    keeps them), so the count is added to its state, saved again in the one format."""
    import torch  # read as runtime/checkpoint.py reads it: tensors and plain values

    from raymix.runtime.checkpoint import write_checkpoint

    found = sorted(trial.glob("checkpoint_*/meta.json"), key=lambda p: json.loads(p.read_text())["step"])
    if not found:
        raise Refused(f"{trial} holds no checkpoint")
    state = torch.load(found[-1].parent / "state.pt", map_location="cpu", weights_only=True)
    lines = [x for x in (trial / "raymix" / "records.jsonl").read_text().splitlines()
             if x.strip() and json.loads(x)["step"] <= int(state["step"])]
    state["records"] = len(lines)
    write_checkpoint(out / "checkpoints" / f"step_{int(state['step']):06d}", state)
    (out / "records.jsonl").write_text("".join(x + "\n" for x in lines))
    (out / "config.json").write_text(json.dumps(state["config"], indent=2))
    return int(state["step"])


def resume(name: str) -> None:
    plan = _read(name)
    ensure_worktree(plan)
    for t in plan["trials"]:
        out, carried = output_dir(plan, t["name"]), plan["carried"].get(t["name"])
        if carried and latest(out) is None:
            shutil.rmtree(out, ignore_errors=True)
            unpack_trial(CARRIED / name / t["name"], out, carried["sha256"])
    _launch(plan)


def pack(name: str) -> None:
    plan = _read(name)
    piece = {"packed": _now(), "machine": machine(worktree(plan)), "commit": plan["commit"], "parallel": plan["parallel"], "steps": {}}
    for t in plan["trials"]:
        out = output_dir(plan, t["name"])
        if latest(out) is None:
            continue
        before = plan["carried"].get(t["name"], {}).get("step", 0)
        plan["carried"][t["name"]] = carried = pack_trial(out, CARRIED / name / t["name"])
        carried["done"] = carried["step"] >= int(t["config"]["steps"])
        if carried["step"] != before:
            piece["steps"][t["name"]] = [before, carried["step"]]
    if piece["steps"]:
        plan["pieces"].append(piece)
    _write(plan)
    print(f"runs/{name}: " + ", ".join(f"{k} at step {v['step']}" for k, v in plan["carried"].items()) + "; commit runs/" + name)


def status(name: str) -> None:
    plan = _read(name)
    print(f"{name} at {plan['commit'][:7]} ({plan['sweep']}); driver {'running' if _driver_pid(plan) else 'not running'}")
    for t in plan["trials"]:
        found = latest(output_dir(plan, t["name"]))
        carried = plan["carried"].get(t["name"], {}).get("step", 0)
        here = found[1]["step"] if found else 0
        print(f"  {t['name']}: step {here} of {t['config']['steps']} here, {carried} carried")


def stop(name: str) -> None:
    plan = _read(name)
    pid = _driver_pid(plan)
    if pid is None:
        print(f"{name}: no driver running")
        return
    os.kill(pid, signal.SIGINT)
    while _driver_pid(plan) is not None:
        time.sleep(1)
    print(f"{name}: stopped; each trial keeps its last checkpoint")


# ---------------------------------------------------------------------------- the driver
def cpu_share(config: dict, parallel: int) -> float:
    """CPUs per logical worker when ``parallel`` trials share this machine's cores evenly."""
    return (os.cpu_count() or 1) / parallel / int(config.get("n", 12))



def _pid_file(plan: dict) -> Path:
    return worktree(plan) / "results" / f"{plan['name']}.driver.pid"


def _driver_pid(plan: dict) -> "int | None":
    try:
        pid = int(_pid_file(plan).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _launch(plan: dict) -> None:
    if _driver_pid(plan) is not None:
        raise Refused(f"{plan['name']}: its driver is running already (pid {_driver_pid(plan)})")
    log = worktree(plan) / "results" / f"{plan['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        subprocess.Popen([sys.executable, __file__, "drive", plan["name"]], stdout=fh, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    print(f"{plan['name']}: running from {worktree(plan)}; log {log}")


def drive(name: str) -> None:
    """Keep ``parallel`` trials running until each has reached its last step; on SIGINT or
    SIGTERM, pass SIGINT to them (each stops at its last checkpoint) and wait."""
    plan = _read(name)
    wt, pid_file = worktree(plan), _pid_file(plan)
    pid_file.write_text(str(os.getpid()))
    env = dict(os.environ)
    if not env.get("RAYMIX_DATA_DIR") and (REPO.parent / "shared" / "data").is_dir():
        env["RAYMIX_DATA_DIR"] = str(REPO.parent / "shared" / "data")  # as the Makefile does
    stopping: list[int] = []
    signal.signal(signal.SIGINT, lambda s, f: stopping.append(s))
    signal.signal(signal.SIGTERM, lambda s, f: stopping.append(s))
    waiting, running = [t for t in plan["trials"]], {}
    try:
        while (waiting or running) and not stopping:
            while waiting and len(running) < int(plan["parallel"]):
                t = waiting.pop(0)
                out = output_dir(plan, t["name"])
                found = latest(out)
                if found and int(found[1]["step"]) >= int(t["config"]["steps"]):
                    continue
                out.mkdir(parents=True, exist_ok=True)
                spec = out.parent / f"{t['name']}.json"
                spec.write_text(json.dumps(t["config"], indent=1))
                # Each trial its share of the cores, so that its actors compute on one thread each
                # (two intra-op threads per actor on a shared 2-core machine ran 7x slower).
                share = f"{cpu_share(t['config'], int(plan['parallel'])):.4f}"
                cmd = [str(wt / ".venv" / "bin" / "raymix"), "run", "--config", str(spec), "--output-dir", str(out),
                       "--num-cpus-per-worker", share]
                if found:
                    cmd.append("--resume")
                elif (out / "records.jsonl").exists():  # stopped before its first checkpoint: nothing to resume
                    cmd.append("--overwrite")
                print(f"{_now()} {t['name']}: {'resumes at step ' + str(found[1]['step']) if found else 'starts'}, "
                      f"{share} CPU per worker", flush=True)
                running[t["name"]] = subprocess.Popen(cmd, cwd=wt, env=env, stdin=subprocess.DEVNULL)
            time.sleep(2)
            for trial, proc in list(running.items()):
                if proc.poll() is not None:
                    print(f"{_now()} {trial}: exited {proc.returncode}", flush=True)
                    del running[trial]
                    # a failed trial (its log above says why) is not retried: the others go on
        for proc in running.values():
            proc.send_signal(signal.SIGINT)
        for trial, proc in running.items():
            proc.wait()
            print(f"{_now()} {trial}: stopped ({proc.returncode})", flush=True)
    finally:
        pid_file.unlink(missing_ok=True)


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(prog="runs/carry.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start a sweep file's trials from a worktree at a commit")
    s.add_argument("name")
    s.add_argument("sweep", help="the sweep file, relative to the repository (read at the commit)")
    s.add_argument("--commit", default="HEAD", help="the commit the run is frozen at (default: HEAD)")
    s.add_argument("--parallel", type=int, default=2, help="trials at once (default: 2)")
    s.add_argument("--steps", type=int, help="each trial's steps (default: the sweep file's)")
    s.add_argument("--from", dest="tune_dir", type=Path,
                   help="a Tune sweep of the same file at the same commit, or a carried run of it (runs/NAME): "
                        "each trial continues from its state there")
    for cmd in ("continue", "pack", "status", "stop", "drive"):
        sub.add_parser(cmd).add_argument("name")
    args = ap.parse_args(argv)
    try:
        if args.command == "start":
            if args.parallel < 1:
                raise Refused("--parallel must be at least 1")
            if args.steps is not None and args.steps < 1:
                raise Refused("--steps must be at least 1")
            start(args.name, args.sweep, args.commit, args.parallel, args.steps, args.tune_dir)
        else:
            {"continue": resume, "pack": pack, "status": status, "stop": stop, "drive": drive}[args.command](args.name)
    except (Refused, ValueError, subprocess.CalledProcessError) as exc:
        print(f"runs/carry.py {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `status NAME | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
