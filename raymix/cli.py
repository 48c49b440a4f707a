"""``raymix`` command line: ``run``, ``sweep``, ``report``, ``demo``, and the listings
``rules`` and ``attacks``.

``raymix run --config x.yaml --n 12 --attack "ipm(epsilon=0.1)" --steps 200``: every
:class:`~raymix.config.ExperimentConfig` field is a flag (``--batch-size`` or
``--batch_size``), its help line the field's own documentation (``config.knob``); booleans
are ``--diagnostics`` / ``--no-diagnostics``; flags override the YAML. A progress line with
the time left goes to stderr at every evaluation; the final test accuracy is printed on
stdout. Messages go through :mod:`logging` (logger ``raymix``); Ray's own start-up lines stay
out of the terminal unless ``--verbose``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

from raymix.config import ExperimentConfig
from raymix.progress import time_left

__all__ = ["main", "build_run_parser", "config_from_args", "Parser", "UsageError"]


class UsageError(SystemExit):
    """A command line that argparse cannot parse (exit status 2): its one line is printed
    already; :func:`main` returns 2 for it."""


class Parser(argparse.ArgumentParser):
    """argparse with its refusals in one line and exit status 2, like every other refusal of
    the command line: ``raymix run: argument --n: invalid int value: 'abc' (raymix run --help
    lists the options)`` instead of the usage block followed by the error. Every subcommand's
    parser is one (run, sweep, report, demo, rules, attacks)."""

    def error(self, message: str):
        print(f"{self.prog}: {message} ({self.prog} --help lists the options)", file=sys.stderr)
        raise UsageError(2)


def _none_or(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _auto_or_float(text: str) -> Any:
    return "auto" if text == "auto" else float(text)


def _auto_or_int(text: str) -> Any:
    return "auto" if text == "auto" else int(text)


def _all_or_int(text: str) -> Any:
    return "all" if text == "all" else int(text)


# argparse names a converter in its refusal ("invalid 'auto' or integer value: 'x'")
_auto_or_float.__name__, _auto_or_int.__name__, _all_or_int.__name__ = "'auto' or number", "'auto' or integer", "'all' or integer"


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
    if default is None:  # an optional field ("none" unsets it): its annotation says of what
        kind = str(f.type)
        return _none_or(int if "int" in kind else float if "float" in kind else str)
    if isinstance(default, int) and not isinstance(default, bool):
        return int
    if isinstance(default, float):
        return float
    return str


class _Switch(argparse.Action):
    """``--diagnostics`` sets true, ``--no-diagnostics`` false."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no-"))


def _choices(kind: "tuple | str | None") -> str:
    if kind is None:
        return ""
    if isinstance(kind, tuple):
        return "; one of " + ", ".join(kind)
    if kind in ("rules", "attacks"):
        return f"; `raymix {kind}` lists them"
    from raymix.plugins import registry

    names = registry(kind).names()
    return "; one of " + ", ".join(names) if names else ""


def field_help(f: dataclasses.Field) -> str:
    """A field's help line: its documentation, its choices, its default."""
    default = f.default
    shown = "none" if default is None else ("true" if default is True else "false" if default is False else
                                             ", ".join(default) or "none" if isinstance(default, tuple) else default)
    return f"{f.metadata.get('doc', '')}{_choices(f.metadata.get('choices'))} (default: {shown})".replace("%", "%%")


def build_run_parser(prog: str = "raymix run") -> argparse.ArgumentParser:
    ap = Parser(prog=prog, description="Run one simulation (docs/runtime.md explains every field).")
    ap.add_argument("--config", help="a YAML file of config fields (flags override it)")
    ap.add_argument("--plugin", action="append", metavar="MODULE",
                    help="import MODULE first: its rules, attacks, models and datasets become usable (repeatable)")
    ap.add_argument("--address", help="a Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    ap.add_argument("--overwrite", action="store_true", help="replace a run already in output_dir (refused otherwise)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--verbose", action="store_true", help="let Ray's own start-up and log lines through")
    fields = ap.add_argument_group("experiment fields")
    for f in dataclasses.fields(ExperimentConfig):
        if f.name == "plugins":  # --plugin above, once per module
            continue
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        if isinstance(f.default, bool):
            flag = names[0][2:]
            fields.add_argument(f"--{flag}", f"--no-{flag}", dest=f.name, action=_Switch, default=argparse.SUPPRESS,
                                help=field_help(f))
            if len(names) > 1:  # the underscore spelling works too, without a second help line
                fields.add_argument(f"--{f.name}", f"--no-{f.name}", dest=f.name, action=_Switch,
                                    default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            fields.add_argument(*names, dest=f.name, type=_converter(f), default=argparse.SUPPRESS,
                                metavar=f.name.upper(), help=field_help(f))
    return ap


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    names = set(ExperimentConfig.field_names())
    overrides = {k: v for k, v in vars(args).items() if k in names}
    if args.config:
        if getattr(args, "plugin", None):  # added to the YAML's own list (the config imports them first)
            from raymix.config import read_yaml_mapping
            from raymix.plugins import normalise_plugins

            data = read_yaml_mapping(args.config, "config file", "a mapping of field: value")
            data = data["experiment"] if isinstance(data.get("experiment"), dict) else data
            overrides["plugins"] = tuple(dict.fromkeys(normalise_plugins(data.get("plugins")) + tuple(args.plugin)))
        return ExperimentConfig.from_yaml(args.config, overrides)
    if getattr(args, "plugin", None):
        overrides["plugins"] = tuple(args.plugin)
    return ExperimentConfig.from_dict(overrides)


def _progress(total: int) -> Callable[[dict], None]:
    """One line per evaluation, with the time left at the rate since the first evaluation
    (start-up and the first interval are not steady state: the line after the first shows it)."""
    first: list = []

    def show(rec: dict) -> None:
        now, step = time.monotonic(), int(rec["step"])
        if not first:
            first.append((now, step))
        left = time_left(step - first[0][1], total - first[0][1], now - first[0][0])
        acc, sps = rec.get("test_accuracy"), rec.get("steps_per_second")
        line = f"step {step}/{total}"
        if acc is not None and sps is not None:
            line += f"  test_accuracy {acc:.4f}  train_loss {rec['train_loss']:.4f}  steps/s {sps:.2f}"
        if left:
            line += f"  about {left} left"
        print(line, file=sys.stderr, flush=True)

    return show


def cmd_run(argv: Sequence[str]) -> int:
    ap = build_run_parser()
    args = ap.parse_args(list(argv))
    if args.resume and args.overwrite:
        print("raymix run: --resume and --overwrite contradict each other: continue the run, or replace it", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"raymix run: {exc}", file=sys.stderr)
        return 2
    from raymix.interrupts import Interrupted, interruptible
    from raymix.runtime import run_experiment
    from raymix.runtime.resources import Refused
    from raymix.runtime.simulation import Diverged

    try:
        with interruptible():
            result = run_experiment(cfg, resume=args.resume, address=args.address, overwrite=args.overwrite,
                                    progress=None if args.quiet else _progress(cfg.steps), verbose=args.verbose)
    except Interrupted as exc:
        print(f"raymix run: interrupted ({exc}); {_kept(cfg.output_dir)}", file=sys.stderr)
        return exc.exit_code
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
    if result.final.get("all_steps_skipped"):
        print(f"raymix run: every one of the {result.final['step']} steps was skipped (a non-finite aggregate or training "
              f"loss each time; on_divergence: skip): the weights never moved", file=sys.stderr)
        return 3
    acc = result.final_accuracy
    print(f"final test accuracy {acc:.4f} at step {result.final.get('step')} ({result.steps_per_second:.2f} steps/s)"
          if acc is not None else "no evaluation recorded")
    if result.output_dir is not None:
        print(f"records: {result.output_dir / 'records.jsonl'}", file=sys.stderr)
    return 0


def _kept(output_dir: "str | None") -> str:
    """What an interrupted run left, and the command that continues it."""
    from raymix.interrupts import resume_command
    from raymix.records import read_records
    from raymix.runtime.checkpoint import latest_checkpoint

    if output_dir is None:
        return "nothing was kept (no --output-dir)"
    records, ckpt = read_records(output_dir), latest_checkpoint(output_dir)
    if ckpt is None:
        return f"no checkpoint was written yet in {output_dir}: start it again"
    step = int(ckpt.name.split("_")[-1])
    return (f"{len(records)} record(s) to step {records[-1]['step'] if records else 0} and the checkpoint at step {step} "
            f"are kept in {output_dir}; continue from step {step} with: {resume_command()}")


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


def _describe(obj: Any) -> tuple[str, str, str]:
    """(summary, precondition, where) of a registered class or factory."""
    doc = (inspect.getdoc(obj) or "").strip().splitlines()
    module = getattr(obj, "__module__", "") or ""
    return doc[0] if doc else "", str(getattr(obj, "needs", "") or ""), "" if module.startswith("raymix.") else f"[{module}]"


def cmd_list(kind: str, argv: Sequence[str]) -> int:
    """``raymix rules`` / ``raymix attacks``: every registered name (built-in and plugins)
    with its one-line description and its precondition on n and f."""
    ap = Parser(prog=f"raymix {kind}", description=f"List the {kind} a spec may name, plugins included.")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE first (repeatable)")
    args = ap.parse_args(list(argv))
    try:
        if args.plugin:
            from raymix.plugins import load_plugins

            load_plugins(args.plugin)
    except ValueError as exc:
        print(f"raymix {kind}: {exc}", file=sys.stderr)
        return 2
    from raymix.plugins import registry

    found = registry(kind)
    rows = [(name, *_describe(found.factory(name))) for name in found.names()]
    width = max(len(r[0]) for r in rows)
    needs_width = max(len(r[2]) for r in rows)
    for name, summary, needs, where in rows:
        print(f"{name:{width}s}  {needs:{needs_width}s}  {summary}{'  ' + where if where else ''}".rstrip())
    if kind == "rules":
        from raymix.pool import COMPOSITIONS

        print(f"\npools (the aggregator field also takes): mixtailor (the paper's 64 rules), "
              f"mixtailor(composition={'|'.join(COMPOSITIONS[1:])}), mixtailor(exclude=[...]), mixtailor(add=[your_rule]), "
              f"pool(members=[...], weights=[...]), and omniscient (the honest rows' mean)")
    return 0


# subcommand -> (handler, one-line help). sweep/report delegate to their module's main(argv).
SUBCOMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "run": (cmd_run, "run one simulation"),
    "demo": (lambda argv: _delegate("raymix.demo", argv, "demo"), "one-step demonstration: which rules each attack fools"),
    "sweep": (lambda argv: _delegate("raymix.sweep", argv, "sweep"), "a Ray Tune sweep from a YAML"),
    "report": (lambda argv: _delegate("raymix.analysis.report", argv, "report"), "figures and tables from a sweep"),
    "rules": (lambda argv: cmd_list("rules", argv), "the aggregation rules a spec may name, with their preconditions"),
    "attacks": (lambda argv: cmd_list("attacks", argv), "the attacks a spec may name, with their preconditions"),
}


def _setup_logging() -> None:
    """Library messages (logger ``raymix``) to stderr as plain lines; a program embedding
    raymix keeps its own logging setup (this runs only from the command line)."""
    logger = logging.getLogger("raymix")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from raymix import __version__

        print(f"raymix {__version__}")
        return 0
    if not argv:
        print(f"raymix: no command given; choose from {', '.join(SUBCOMMANDS)} (raymix --help says what each does)",
              file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print("usage: raymix {" + ",".join(SUBCOMMANDS) + "} ...\n")
        for name, (_, text) in SUBCOMMANDS.items():
            print(f"  {name:8s} {text}")
        return 0
    name, rest = argv[0], argv[1:]
    _setup_logging()
    if name not in SUBCOMMANDS:
        print(f"raymix: unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    try:
        return SUBCOMMANDS[name][0](rest)
    except UsageError:  # its one line is printed
        return 2
    except BrokenPipeError:  # `raymix rules | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
