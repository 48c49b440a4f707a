"""``raymix`` command line: ``raymix run``, ``raymix demo`` (and ``sweep``/``report`` when
those modules provide a ``main``).

``raymix run --config x.yaml --n 12 --attack "ipm(epsilon=0.1)" --steps 200``: every
:class:`~raymix.config.ExperimentConfig` field is a flag (``--batch-size`` or
``--batch_size``); flags override the YAML. A progress line goes to stderr at every
evaluation; the final test accuracy is printed on stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from typing import Any, Callable, Sequence

from raymix.config import ExperimentConfig

__all__ = ["main", "build_run_parser", "config_from_args"]


def _none_or(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _auto_or_float(text: str) -> Any:
    return "auto" if text == "auto" else float(text)


def _auto_or_int(text: str) -> Any:
    return "auto" if text == "auto" else int(text)


def _all_or_int(text: str) -> Any:
    return "all" if text == "all" else int(text)


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "data_dir": _none_or(str),
    "output_dir": _none_or(str),
    "train_limit": _none_or(int),
    "eval_test_limit": _none_or(int),
    "num_gpus_per_worker": _auto_or_float,
    "num_cpus_per_worker": _auto_or_float,
    "attack_knowledge": _all_or_int,
    "workers_per_actor": _auto_or_int,
}


def _converter(f: dataclasses.Field) -> Callable[[str], Any]:
    if f.name in _CONVERTERS:
        return _CONVERTERS[f.name]
    default = f.default
    if isinstance(default, bool):
        return _bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def build_run_parser(prog: str = "raymix run") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Run one simulation (see docs/runtime.md).")
    ap.add_argument("--config", help="a YAML file of config fields (flags override it)")
    ap.add_argument("--address", help="a Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    ap.add_argument("--overwrite", action="store_true", help="replace a run already in output_dir (refused otherwise)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    fields = ap.add_argument_group("experiment fields")
    for f in dataclasses.fields(ExperimentConfig):
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        fields.add_argument(*names, dest=f.name, type=_converter(f), default=argparse.SUPPRESS,
                            metavar=f.name.upper(), help=f"default: {f.default!r}")
    return ap


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    names = set(ExperimentConfig.field_names())
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.config:
        return ExperimentConfig.from_yaml(args.config, overrides)
    return ExperimentConfig.from_dict(overrides)


def _progress(total: int) -> Callable[[dict], None]:
    def show(rec: dict) -> None:
        acc = rec.get("test_accuracy")
        sps = rec.get("steps_per_second")
        print(
            f"step {rec['step']}/{total}  test_accuracy {acc:.4f}  train_loss {rec['train_loss']:.4f}  "
            f"steps/s {sps:.2f}" if acc is not None and sps is not None else f"step {rec['step']}/{total}",
            file=sys.stderr, flush=True,
        )

    return show


def cmd_run(argv: Sequence[str]) -> int:
    ap = build_run_parser()
    args = ap.parse_args(list(argv))
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"raymix run: {exc}", file=sys.stderr)
        return 2
    from raymix.runtime import run_experiment
    from raymix.runtime.resources import Refused
    from raymix.runtime.simulation import Diverged

    try:
        result = run_experiment(cfg, resume=args.resume, address=args.address, overwrite=args.overwrite,
                                progress=None if args.quiet else _progress(cfg.steps))
    except Refused as exc:  # the preflight's refusals (data, resources, resume, overwrite)
        print(f"raymix run: {exc}", file=sys.stderr)
        return 2
    except Diverged as exc:
        print(f"raymix run: diverged at {exc}", file=sys.stderr)
        return 3
    except OSError as exc:  # the disk filled up, or went away, while writing records or a checkpoint
        if exc.errno is None:
            raise
        print(f"raymix run: {exc.strerror} while writing {exc.filename or cfg.output_dir}: what was written is kept; "
              f"free space and continue with --resume", file=sys.stderr)
        return 1
    acc = result.final_accuracy
    print(f"final test accuracy {acc:.4f} at step {result.final.get('step')} ({result.steps_per_second:.2f} steps/s)"
          if acc is not None else "no evaluation recorded")
    if result.output_dir is not None:
        print(f"records: {result.output_dir / 'records.jsonl'}", file=sys.stderr)
    return 0


def _delegate(module: str, argv: Sequence[str], name: str) -> int:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        print(f"raymix {name}: not available ({exc})", file=sys.stderr)
        return 2
    entry = getattr(mod, "main", None)
    if entry is None:
        print(f"raymix {name}: {module} has no main(argv) yet", file=sys.stderr)
        return 2
    return int(entry(list(argv)) or 0)


# subcommand -> (handler, one-line help). sweep/report delegate to their module's main(argv).
SUBCOMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "run": (cmd_run, "run one simulation"),
    "demo": (lambda argv: _delegate("raymix.demo", argv, "demo"), "one-step demonstration: which rules each attack fools"),
    "sweep": (lambda argv: _delegate("raymix.sweep", argv, "sweep"), "a Ray Tune sweep from a YAML"),
    "report": (lambda argv: _delegate("raymix.analysis.report", argv, "report"), "figures and tables from a sweep"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from raymix import __version__

        print(f"raymix {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: raymix {" + ",".join(SUBCOMMANDS) + "} ...\n")
        for name, (_, text) in SUBCOMMANDS.items():
            print(f"  {name:8s} {text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"raymix: unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[name][0](rest)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
