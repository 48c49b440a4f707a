"""One experiment configuration: :class:`ExperimentConfig`.

Built the same way from YAML (:meth:`ExperimentConfig.from_yaml`), from command-line flags
(``raymix run``; flags override the YAML) and from a Ray Tune ``param_space`` dict
(:meth:`ExperimentConfig.from_dict`). Every field is validated at construction, and every
impossible combination (a pool member whose precondition fails for n and f, f >= n/2, an
unknown dataset/rule/attack, ...) is refused with a message naming it, before any actor
starts. Validation never starts Ray and looks at no file: the checks of the environment (the
data files exist, the run fits the cluster) are the preflight's (:func:`check_data`,
``raymix.runtime.resources.preflight``), so a validated config travels whole to actors on
other hosts.

Validation builds the pool and the attack to check them; the config keeps both, and
everything in the process that runs it reuses them (:meth:`ExperimentConfig.build_pool`):
one validation and one build per run or trial, not one per reader.

See docs/runtime.md for the meaning of every field.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from raymix import checks

__all__ = ["ExperimentConfig", "check_data", "spec_text", "PARTITIONS", "MODES", "SPEC_FIELDS", "SWEEP_SECTIONS", "PLACEMENT_FIELDS"]

# Datasets and models are registries (raymix.data.DATASETS, raymix.models.MODELS) that plugins extend.
PARTITIONS = ("iid", "label_sorted", "dirichlet")
MODES = ("gradient", "model")
DIVERGENCE = ("stop", "skip")
BYZANTINE_SAMPLING = ("fixed", "random")
DEVICES = ("auto", "cuda", "cpu")
# Fields whose value is a spec string; from_dict also accepts {"name": ..., **args} for them.
SPEC_FIELDS = ("aggregator", "attack")
# Fields that say where a run computes and where its data lie, never what it computes: the
# preflight fills in the first three for every run and trial (runtime/resources.py: resolve),
# a sweep pins data_dir to an absolute path. No check of the specs reads them, so replace()
# changes them without validating the specs again or rebuilding the pool and the attack.
# A sweep file's top-level sections (raymix/sweep.py); `raymix run --config` reads such a
# file's experiment section.
SWEEP_SECTIONS = ("name", "description", "experiment", "search", "run", "search_alg", "scheduler", "worst_case")
PLACEMENT_FIELDS = ("workers_per_actor", "num_cpus_per_worker", "num_gpus_per_worker", "data_dir")
# Where a config keeps the pool and attack it built (in its __dict__, outside the fields:
# not compared, not printed, not pickled).
_BUILT = "_built"


def knob(default: Any, doc: str, choices: "tuple[str, ...] | str | None" = None, detail: str = ""):
    """A config field with its one-line documentation: the single source of ``raymix run
    --help``, ``raymix sweep --help`` and docs/runtime.md's table (:func:`field_table`).
    ``choices`` names the allowed values (a tuple), or the registry that holds them
    (``"rules"``, ``"attacks"``, ``"models"``, ``"datasets"``), which plugins extend;
    ``detail`` is said in the docs' table only (markdown)."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "detail": detail})


# Where the docs' table sends a reader for the values a registry holds.
_REGISTRY_DOCS = {"rules": "docs/rules.md", "attacks": "docs/attacks.md", "models": "docs/data_and_models.md",
                  "datasets": "docs/data_and_models.md"}


def field_table() -> str:
    """docs/runtime.md's table of fields, from the knobs (``python -m raymix.config`` prints
    it; tests/test_config.py fails when the docs differ)."""
    def shown(v: Any) -> str:
        if v is None or v == ():
            return "none"
        return str(v).lower() if isinstance(v, bool) else f"`{v}`" if isinstance(v, str) else str(v)

    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in fields(ExperimentConfig):
        meta = f.metadata
        text = meta["doc"]
        choices = meta["choices"]
        if isinstance(choices, tuple):
            text += ": " + ", ".join(f"`{c}`" for c in choices)
        elif isinstance(choices, str):
            text += f" (the {choices}: {_REGISTRY_DOCS[choices]})"
        if meta["detail"]:
            text += ". " + meta["detail"]
        rows.append(f"| `{f.name}` | {shown(f.default)} | {text} |")
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class ExperimentConfig:
    # plugins: imported first, so their rules, attacks, models and datasets are known below
    plugins: tuple = knob((), "modules to import before anything is built (your own rules, attacks, models, datasets)")
    # data
    dataset: str = knob("synthetic", "the training and test data (synthetic needs no files)", "datasets")
    data_dir: str | None = knob(None, "data root; none = RAYMIX_DATA_DIR, else ~/.cache/raymix/data; never downloaded",
                                detail="Must already hold the files: checked by the preflight (`data.check_data_available`), in content too")
    partition: str = knob("iid", "how the training set is split among the workers", PARTITIONS,
                           detail="`label_sorted` is the non-iid split: with 10 honest workers and 10 classes, one class each")
    dirichlet_alpha: float = knob(0.5, "concentration of the dirichlet partition (smaller: more skewed)")
    train_limit: int | None = knob(None, "keep a seeded subset of this many training samples (quick runs)")
    model: str = knob("auto", "the network; auto = the dataset's default (paper_cnn for the image sets)", "models")
    # workers and threat model
    n: int = knob(12, "workers in all, Byzantine ones included")
    f: int = knob(2, "Byzantine workers among the n (f < n/2)")
    assumed_f: int | None = knob(None, "the f the rules are told (a wrong guess either way); none = the true f",
                                 detail="0 <= assumed_f < n; the pool's preconditions are checked against it. The Byzantine workers still send f rows (docs/runtime.md, Threat settings)")
    participation: int | None = knob(None, "workers taking part in each step (m, drawn anew each step); none = all n",
                                     detail="f < m <= n; the rules get m rows and are told assumed_f, else f; the pool's preconditions are checked against m. Drawn from the server's stream `(seed, \"aggregator\", \"participation\", step)`; each record's `byzantine_rows` lists the Byzantine rows of each step")
    byzantine_sampling: str = knob("fixed", "with participation: all f Byzantine workers take part every step (fixed), or the m are drawn from all n (random)",
                                   BYZANTINE_SAMPLING)
    aggregator: str = knob("mixtailor", "a rule spec (krum, comed, ...), a pool (mixtailor, mixtailor(exclude=[bulyan])) or omniscient", "rules",
                           detail="Pools: `mixtailor(include=[krum, comed])`, `mixtailor(composition=no_bulyan)`, `mixtailor(add=[your_rule])`, `mixtailor(random_p=true, p_seed=0)` (each member's p drawn from 1..16, the paper's text), `mixtailor(geomed_iters=5)`, `pool(members=[krum, comed])`; `omniscient` is the mean of the honest gradients only")
    drop_invalid: bool = knob(False, "leave out the pool members whose precondition fails for n, f (else: refused)")
    attack: str = knob("ipm(epsilon=0.1)", "the Byzantine workers' attack spec (none: honest behaviour)", "attacks")
    attack_knowledge: "str | int" = knob("all", "honest gradients the adversary sees each step: all, or a count k",
                                         detail="The k are chosen from the public stream `(seed, \"knowledge\", step)`")
    # training
    mode: str = knob("gradient", "workers send gradients, or model updates after local_steps of SGD", MODES)
    local_steps: int = knob(1, "local SGD steps per round in model mode")
    steps: int = knob(100, "training steps (rounds)")
    batch_size: int = knob(50, "samples per worker per step")
    lr: float = knob(0.001, "the server's SGD learning rate")
    momentum: float = knob(0.9, "the server's SGD momentum (0 in model mode)")
    worker_momentum: float = knob(0.0, "each honest worker sends its momentum buffer m_t = beta m_(t-1) + (1-beta) g_t; 0 = its raw row",
                                  detail="beta in [0, 1); m_0 = 0. The adversary sees the sent buffers; the Byzantine workers of a data attack or `none` keep theirs too. Distinct from the server's `momentum`, which stays available (docs/runtime.md, Threat settings)")
    weight_decay: float = knob(1e-4, "the server's SGD weight decay")
    resampling: int = knob(0, "s > 1 wraps every pool member in s-replacement resampling (0, 1: off)",
                            detail="`resampling(s=S, rule=<member>)` (He, Karimireddy & Jaggi 2020, the paper's choice for non-iid; the member's family kept); its permutations come from the aggregator's stream `(seed, \"aggregator\", \"resample\", step)`")
    on_divergence: str = knob("stop", "a non-finite aggregate or loss: stop the run there, or skip that step's update", DIVERGENCE,
                              detail="Such an update never reaches the weights or the momentum. `stop`: the last record's `diverged` says why, `raymix run` exits 3, a Tune trial ends without retry (the failure is deterministic); `skip`: counted in `skipped_steps`")
    # evaluation and records
    eval_every: int = knob(10, "evaluate and write a record every k steps (and at the last step)")
    eval_test_limit: int | None = knob(None, "test samples per evaluation; none = the whole test set")
    diagnostics: bool = knob(False, "at each evaluation apply every pool member to that step's inputs (fooled share, expected inner product)")
    # execution
    workers_per_actor: "str | int" = knob("auto", "honest workers per actor (one vectorised pass); auto = one pack per GPU, else per 2 CPUs")
    num_gpus_per_worker: "str | float" = knob("auto", "GPU share per worker; auto = 1/n of a GPU when the cluster has GPUs, else 0")
    num_cpus_per_worker: "str | float" = knob("auto", "CPU share per worker; auto = the cluster's CPUs shared by all actors")
    device: str = knob("auto", "where the actors compute: auto = CUDA in an actor that holds a GPU share, else the CPU", DEVICES,
                       detail="An actor given a GPU share where torch cannot use CUDA is refused in one line before the first step, unless `cpu` was asked for (then the share is only a reservation, as in tests with Ray's logical GPUs)")
    max_gpu_processes: int = knob(32, "processes computing on one GPU at most (each opens a CUDA context of ~0.5 GiB)",
                                  detail="A run whose actors would put more on one GPU is refused in one line before any starts (raise workers_per_actor; `auto` packs one actor per GPU); a sweep puts no more trials on a GPU than this allows")
    deterministic: bool = knob(True, "on CUDA: deterministic algorithms, deterministic cuDNN, no TF32 (off: faster, records may vary run to run)",
                               detail="Sets `torch.use_deterministic_algorithms(True)`, cuDNN's deterministic mode without benchmarking, TF32 off and `CUBLAS_WORKSPACE_CONFIG=:4096:8` in every actor on CUDA; CPU runs are deterministic either way (docs/runtime.md, Determinism)")
    seed: int = knob(0, "every random stream (data, draws, attack) derives from it")
    checkpoint_every: int = knob(0, "checkpoint every k steps (a multiple of eval_every); 0 = at every evaluation",
                                 detail="And at the last step; with an `output_dir` or in a sweep")
    output_dir: str | None = knob(None, "where records, config.json and checkpoints go; none = records in memory only, no checkpoints")

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        """From a flat or nested dict (a Tune ``param_space`` sample, a YAML mapping).

        Nested dicts are allowed in two forms: a section whose keys are fields
        (``{"optimizer": {"lr": 0.01, "momentum": 0.9}}``), and a spec field given as a mapping
        (``{"attack": {"name": "ipm", "epsilon": 0.1}}`` is ``"ipm(epsilon=0.1)"``). Unknown
        keys are an error naming them."""
        if not isinstance(d, Mapping):
            raise TypeError(f"an experiment config must be a mapping, got {type(d).__name__}")
        flat: dict[str, Any] = {}
        unknown: list[str] = []
        _flatten_into(d, "", flat, unknown)
        if unknown:
            raise ValueError(
                f"unknown config key(s): {', '.join(sorted(unknown))}; known fields: {', '.join(cls.field_names())}"
            )
        return cls(**{k: _plain(v) for k, v in flat.items()})

    @classmethod
    def from_yaml(cls, path: "str | Path", overrides: Mapping[str, Any] | None = None) -> "ExperimentConfig":
        path = Path(path)
        lines: dict = {}
        data = read_yaml_mapping(path, "config file", "a mapping of field: value", lines)
        # A sweep-style file ({experiment: {...}}) is accepted for its experiment section.
        if set(data) >= {"experiment"} and set(data) <= set(SWEEP_SECTIONS):
            data = data["experiment"] or {}
            if not isinstance(data, Mapping):
                raise ValueError(f"{path} line {lines['experiment']}: 'experiment' must be a mapping of field: value, got {data!r}")
        merged = dict(data)
        if overrides:
            flat: dict[str, Any] = {}
            unknown: list[str] = []
            _flatten_into(merged, "", flat, unknown)
            if unknown:
                raise ValueError(f"{path}: unknown config key(s): {', '.join(sorted(unknown))}")
            flat.update(overrides)
            merged = flat
        try:
            return cls.from_dict(merged)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{path}{yaml_line(exc, lines, overrides)}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """A flat dict of plain values; ``from_dict(to_dict())`` gives an equal config."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> "ExperimentConfig":
        """This config with ``changes``, validated. A change of ``PLACEMENT_FIELDS`` only
        checks the plugins and the scalar fields again and shares this config's pool and
        attack: the specs did not change, and the preflight makes such a copy of every
        run's and trial's config (each used to rebuild the 64-rule pool and the attack)."""
        if changes.keys() <= set(PLACEMENT_FIELDS):
            new = object.__new__(type(self))
            self.__dict__.setdefault(_BUILT, {})  # one dict for both: whichever builds first, builds for both
            new.__dict__.update(self.__dict__, **changes)
            _check_fields(new)
            return new
        return dataclasses.replace(self, **changes)

    def __getstate__(self) -> dict:
        # Sent to an actor (or pickled) without the pool and the attack: the receiving process
        # builds them once on first use, after importing the plugins they may come from.
        return {k: v for k, v in self.__dict__.items() if k != _BUILT}

    # ------------------------------------------------------------------ derived values
    @property
    def model_name(self) -> str:
        if self.model != "auto":
            return self.model
        from raymix.models import default_model

        return default_model(self.dataset)

    @property
    def is_omniscient(self) -> bool:
        return self.aggregator.strip() == "omniscient"

    @property
    def rule_n(self) -> int:
        """The rows the rules aggregate each step: ``participation``, else n."""
        return self.n if self.participation is None else int(self.participation)

    @property
    def byzantine_counts(self) -> tuple[int, ...]:
        """The Byzantine rows a step may hold (``random`` sampling: any count up to f)."""
        if self.participation is None or self.byzantine_sampling == "fixed":
            return (self.f,)
        return tuple(range(0, self.f + 1))

    @property
    def rule_f(self) -> int:
        """The f the aggregation rules are told: ``assumed_f``, else the true f."""
        return self.f if self.assumed_f is None else int(self.assumed_f)

    @property
    def num_honest(self) -> int:
        return self.n - self.f

    @property
    def byzantine_use_data(self) -> bool:
        """The Byzantine workers train on shards of their own (a data attack, or ``none``)
        rather than craft rows from the honest ones."""
        return self.f > 0 and not self.is_omniscient and not getattr(self.build_attack(), "crafts_gradients", True)

    @property
    def records_attack_choice(self) -> bool:
        """The records carry the attack's choice (``record["attack"]``): a searching attack runs."""
        return self.f > 0 and not self.is_omniscient and bool(getattr(self.build_attack(), "reports_choice", False))

    def is_eval_step(self, step: int) -> bool:
        """Records (and checkpoints) are taken every ``eval_every`` steps and at the last one."""
        return step % self.eval_every == 0 or step == self.steps

    @property
    def knowledge(self) -> int:
        """How many honest gradients the adversary sees each step."""
        return self.num_honest if self.attack_knowledge == "all" else int(self.attack_knowledge)

    def build_pool(self):
        """The aggregator's pool for this n and f (None for ``omniscient``); resampling wraps
        every member as ``resampling(s=resampling, rule=<member>)``. Built once per config
        (validation builds it) and the same object on every call: the server, the adversary's
        public view and the records' columns share it, as rules are plain data that keep
        nothing between calls."""
        return self._once("pool", lambda: make_pool(self.aggregator, self.rule_n, self.rule_f, self.resampling, self.drop_invalid))

    def build_attack(self):
        """The attack, built once per config and shared as :meth:`build_pool` (attacks are plain
        data too: what one call chooses, ``last_choice``, is set anew by the next)."""
        from raymix.attacks import build_attack

        return self._once("attack", lambda: build_attack(self.attack))

    def _once(self, what: str, build):
        built = self.__dict__.setdefault(_BUILT, {})
        if what not in built:
            built[what] = build()
        return built[what]


# ---------------------------------------------------------------------------- helpers
def read_yaml_mapping(path: "str | Path", what: str, holds: str, key_lines: dict | None = None) -> dict:
    """A YAML file's top-level mapping, with errors that name the file and the line.
    ``key_lines`` (optional) receives the line of every key, for messages about its value."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the {what} itself")
    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=_make_unique_key_loader({} if key_lines is None else key_lines))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}{where}: not valid YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a {what} holds {holds}") from None
    except OSError as exc:  # a file the user may not read
        raise ValueError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if data is None:  # an empty file (or only comments): a mistake, not "all defaults"
        raise ValueError(f"{path}: the {what} is empty; a {what} holds {holds}")
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a {what} holds {holds}")
    return dict(data)


def yaml_line(exc: Exception, key_lines: dict, overrides: Mapping | None = None) -> str:
    """' line N' of the first config field the message names that the YAML file set (and no
    flag overrode), else ''; for unknown keys, the line of the first unknown key (not of a
    field the message lists as known)."""
    import re

    text = str(exc).split("; known fields:")[0]
    unknown = re.search(r"unknown config key\(s\): ([\w, .]+)", text)
    if unknown:
        for w in (x.strip() for x in unknown.group(1).split(",")):
            if w in key_lines:
                return f" line {key_lines[w]}"
    words = re.findall(r"[A-Za-z_]+", text)
    for w in words:
        if w in key_lines and w in ExperimentConfig.field_names() and not (overrides and w in overrides):
            return f" line {key_lines[w]}"
    return ""


def _make_unique_key_loader(key_lines: dict):
    """A safe YAML loader that refuses a key given twice in one mapping (YAML would let the
    last one win silently), naming the key and both lines."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_lines[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return Loader


def make_pool(aggregator: str, n: int, f: int, resampling: int = 0, drop_invalid: bool = False):
    """The pool ``aggregator`` names, restricted to n and f (None for ``omniscient``)."""
    if str(aggregator).strip() == "omniscient":
        return None
    from raymix.pool import MixTailorPool

    pool = MixTailorPool.from_spec(aggregator)
    if resampling > 1:
        from raymix.rules.base import build_rule

        rules = [build_rule(f"resampling(s={resampling}, rule={r.spec})") for r in pool.rules]
        pool = MixTailorPool(rules, pool.families, pool.weights, name=pool.name)
    return pool.restricted(n, f, drop_invalid)


def _flatten_into(d: Mapping[str, Any], prefix: str, out: dict[str, Any], unknown: list[str]) -> None:
    names = set(ExperimentConfig.field_names())
    for key, value in d.items():
        key = str(key)
        if key in names:
            if key in SPEC_FIELDS and isinstance(value, Mapping):
                value = spec_text(key, value)
            if key in out:
                raise ValueError(f"config field {key!r} is given twice")
            out[key] = value
        elif isinstance(value, Mapping):
            _flatten_into(value, f"{prefix}{key}.", out, unknown)
        else:
            unknown.append(prefix + key)


def spec_text(key: str, value: Any) -> Any:
    """A spec field's value as its text: a mapping (``{name: ipm, epsilon: 0.1}``, what a
    sweep's ``attack.epsilon`` axis gives a trial) as ``"ipm(epsilon=0.1)"``; a string as it is."""
    from raymix.spec import Spec

    if not isinstance(value, Mapping):
        return value
    if "name" not in value:
        raise ValueError(f"config field {key!r} given as a mapping needs a 'name' (e.g. {{name: ipm, epsilon: 0.1}}), got {dict(value)}")
    args = tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in value.items() if k != "name")
    return str(Spec(str(value["name"]), args))


def _plain(v: Any) -> Any:
    """numpy scalars (Tune samples them) to Python numbers."""
    try:
        import numpy as np

        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
    except ImportError:  # pragma: no cover
        pass
    return v


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _set(cfg: ExperimentConfig, name: str, value: Any) -> None:
    object.__setattr__(cfg, name, value)


# Every message is "invalid experiment config: <field> must be <expectation>, got <value>"
# (raymix.checks), or names the impossible combination. Each check stores the value in its
# plain type (numpy scalars from Tune become int/float).
_OWNER = "invalid experiment config"


def _err(msg: str) -> ValueError:
    return checks.ArgumentError(f"{_OWNER}: {msg}")


def _need_int(c, name: str, lo: int, optional: bool = False) -> None:
    _set(c, name, checks.integer(_OWNER, name, getattr(c, name), lo, optional=optional))


def _need_num(c, name: str, lo: float, strict: bool) -> None:
    _set(c, name, checks.number(_OWNER, name, getattr(c, name), lo, strict=strict))


def _need_choice(c, name: str, options) -> None:
    checks.choice(_OWNER, name, getattr(c, name), options)


def _need_bool(c, name: str) -> None:
    checks.boolean(_OWNER, name, getattr(c, name))


def _need_known(c, name: str, kind: str, extra: tuple = ()) -> None:
    from raymix.plugins import registry

    v, reg = getattr(c, name), registry(kind)
    if not isinstance(v, str) or (v not in extra and v not in reg):
        raise _err(f"unknown {name} {v!r}; known: {', '.join(extra + tuple(reg.names()))}")


def _validate(c: ExperimentConfig) -> None:
    """Every field, then the combinations, then the specs (built, so their constructors check
    their arguments): the first problem is raised, naming it."""
    _check_fields(c)
    _check_knowledge(c)
    _check_specs(c)


def _check_fields(c: ExperimentConfig) -> None:
    """The plugins, then every scalar field: all a change of ``PLACEMENT_FIELDS`` needs checked."""
    # plugins first: the rules, attacks, models and datasets they register are known below
    from raymix.plugins import PluginError, load_plugins

    try:
        _set(c, "plugins", load_plugins(c.plugins))
    except PluginError as exc:
        raise _err(str(exc)) from exc.__cause__
    _check_scalars(c)


def _check_scalars(c: ExperimentConfig) -> None:
    """Each scalar field's type and range (the combinations: :func:`_check_combinations`)."""
    _need_known(c, "dataset", "datasets")
    _need_choice(c, "partition", PARTITIONS)
    _need_num(c, "dirichlet_alpha", 0.0, True)
    _need_int(c, "train_limit", 1, optional=True)
    _need_known(c, "model", "models", ("auto",))
    _need_int(c, "n", 1)
    _need_int(c, "f", 0)
    _need_int(c, "assumed_f", 0, optional=True)
    _need_int(c, "participation", 1, optional=True)
    _need_choice(c, "byzantine_sampling", BYZANTINE_SAMPLING)
    _need_bool(c, "drop_invalid")
    _need_choice(c, "mode", MODES)
    _need_choice(c, "device", DEVICES)
    _need_int(c, "local_steps", 1)
    _need_int(c, "steps", 1)
    _need_int(c, "batch_size", 1)
    _need_num(c, "lr", 0.0, True)
    _need_num(c, "momentum", 0.0, False)
    _need_num(c, "worker_momentum", 0.0, False)
    _need_num(c, "weight_decay", 0.0, False)
    _need_int(c, "resampling", 0)
    _need_choice(c, "on_divergence", DIVERGENCE)
    _need_int(c, "eval_every", 1)
    _need_int(c, "eval_test_limit", 1, optional=True)
    _need_bool(c, "diagnostics")
    _need_bool(c, "deterministic")
    _need_int(c, "max_gpu_processes", 1)
    if c.workers_per_actor != "auto":
        try:
            _need_int(c, "workers_per_actor", 1)
        except checks.ArgumentError:
            raise checks.fail(_OWNER, "workers_per_actor", "'auto' or an integer >= 1", c.workers_per_actor) from None
    for name in ("num_gpus_per_worker", "num_cpus_per_worker"):
        if getattr(c, name) == "auto":
            continue
        strict = name == "num_cpus_per_worker"
        try:
            _need_num(c, name, 0.0, strict)
        except checks.ArgumentError:
            raise checks.fail(_OWNER, name, f"'auto' or a finite number {'>' if strict else '>='} 0", getattr(c, name)) from None
    _need_int(c, "seed", 0)
    _need_int(c, "checkpoint_every", 0)
    if c.data_dir is not None and not isinstance(c.data_dir, str):
        _set(c, "data_dir", str(c.data_dir))
    if c.output_dir is not None and not isinstance(c.output_dir, str):
        _set(c, "output_dir", str(c.output_dir))
    _check_combinations(c)


def _check_combinations(c: ExperimentConfig) -> None:
    """The scalars' bounds that depend on another field (each field's own type checked first)."""
    if c.assumed_f is not None and c.assumed_f >= c.n:
        raise checks.fail(_OWNER, "assumed_f", f"none or an integer in 0..n-1={c.n - 1}", c.assumed_f)
    if c.participation is not None and not c.f < c.participation <= c.n:
        raise checks.fail(_OWNER, "participation", f"none or an integer in f+1..n={c.f + 1}..{c.n} (at least one honest worker takes part)", c.participation)
    if 2 * c.f >= c.n:
        raise _err(f"f={c.f} Byzantine workers out of n={c.n}: f must be < n/2")
    if c.worker_momentum >= 1.0:
        raise checks.fail(_OWNER, "worker_momentum", "a number in [0, 1)", c.worker_momentum)
    if c.checkpoint_every % c.eval_every and c.checkpoint_every < c.steps:
        # A checkpoint is the state after an evaluation: nothing between two records is saved.
        raise _err(f"checkpoint_every={c.checkpoint_every} must be a multiple of eval_every={c.eval_every}")
    if c.mode == "model" and c.momentum != 0.0:
        raise _err(
            "mode=model applies w += aggregated update with no server optimizer: set momentum to 0 "
            f"(got {c.momentum}); the local steps are plain SGD with lr"
        )
    if c.mode == "gradient" and c.local_steps != 1:
        raise _err(f"local_steps={c.local_steps} only applies with mode=model")


def _check_knowledge(c: ExperimentConfig) -> None:
    """``attack_knowledge``: 'all' or a count of honest rows the adversary sees."""
    k = c.attack_knowledge
    if isinstance(k, str) and k.strip().isdigit():
        k = int(k)
    if k != "all":
        if not checks.is_int(k) or not (0 <= k <= c.n - c.f):
            raise checks.fail(_OWNER, "attack_knowledge", f"'all' or an integer in 0..n-f={c.n - c.f}", c.attack_knowledge)
        k = int(k)
    _set(c, "attack_knowledge", k)


def _check_specs(c: ExperimentConfig) -> None:
    """The aggregator (or pool) and the attack, parsed and built, and what they need of n, f and the data."""
    from raymix.spec import SpecError, parse_spec

    for name in SPEC_FIELDS:
        v = getattr(c, name)
        if not isinstance(v, str):
            raise checks.fail(_OWNER, name, "a spec string", v)
        try:
            _set(c, name, str(parse_spec(v)))
        except SpecError as exc:
            raise _err(f"{name}: {exc}") from None
    try:
        c.build_pool()
    except (SpecError, ValueError, TypeError) as exc:
        told = "" if c.assumed_f is None else f" with assumed_f={c.assumed_f}"
        raise _err(f"aggregator {c.aggregator!r}{told}: {exc}") from None
    try:
        attack = c.build_attack()
        if hasattr(attack, "check"):
            for b in c.byzantine_counts:  # the step's n (m) and its Byzantine count
                if b > 0 or c.f == 0:
                    attack.check(c.rule_n, b)
    except (SpecError, ValueError, TypeError) as exc:
        raise _err(f"attack {c.attack!r}: {exc}") from None
    from raymix.data import num_classes_of

    classes, dataset_classes = getattr(attack, "num_classes", None), num_classes_of(c.dataset)
    if classes is not None and dataset_classes is not None and classes != dataset_classes:
        raise _err(f"attack {c.attack}: num_classes={classes}, but {c.dataset} has {dataset_classes} classes")
    shards = c.n if (c.f > 0 and not c.is_omniscient and not getattr(attack, "crafts_gradients", True)) else c.num_honest
    if c.train_limit is not None and c.train_limit < shards:
        raise _err(f"train_limit={c.train_limit} is fewer samples than the {shards} workers that need a shard each")
    if c.f > 0 and getattr(attack, "crafts_gradients", True) and not c.is_omniscient:
        need = getattr(attack, "min_visible", 0)
        if min(c.knowledge, c.rule_n - c.f) < need:  # at least m-f honest workers take part
            raise _err(f"attack {c.attack} needs at least {need} visible honest gradient(s); attack_knowledge={c.attack_knowledge}")


def check_data(c: ExperimentConfig) -> None:
    """The environment half of the checks: the dataset's files exist where the config says
    (nothing is loaded). Called by the preflight (``runtime/resources.py``), not at
    construction, so a config can be built and shipped where the files are elsewhere."""
    if c.dataset != "synthetic":
        from raymix.data import check_data_available, resolve_data_dir

        try:
            check_data_available(c.dataset, resolve_data_dir(c.data_dir))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"invalid experiment config: dataset {c.dataset!r}: {exc}") from None
        except OSError as exc:  # a data file or directory the user may not read
            raise ValueError(f"invalid experiment config: dataset {c.dataset!r}: {exc.filename or resolve_data_dir(c.data_dir)} "
                             f"cannot be read: {exc.strerror or exc}") from None


if __name__ == "__main__":
    print(field_table(), end="")
