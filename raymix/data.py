"""Datasets, worker partitions and per-step batch sampling (plain PyTorch, no Ray).

Everything is decoded once into ready, normalised tensors (no PIL per image): MNIST-style
idx files are parsed with numpy, CIFAR-10 pickles are converted as one array. All
randomness comes from named seed streams (:mod:`raymix.seeding`), so a dataset subset, a
partition or a worker's batch at a step depends only on (seed, names, step).
"""
from __future__ import annotations

import gzip
import os
import pathlib
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from raymix.spec import Catalogue
from raymix.seeding import numpy_generator, torch_generator

__all__ = [
    "DATASETS",
    "DatasetEntry",
    "num_classes_of",
    "PARTITIONS",
    "TensorDataset",
    "resolve_data_dir",
    "check_data_available",
    "load_dataset",
    "normalise",
    "partition",
    "sample_batches",
    "read_idx",
]

# The kinds implemented below; config.PARTITIONS (what a config may name) is the same tuple
# (tests/test_data.py checks it): data.py stays below config.py, which must not import torch.
PARTITIONS = ("iid", "label_sorted", "dirichlet")

# name -> (folder under data_dir, mean per channel, std per channel)
_IDX_DATASETS = {
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)

# synthetic: 10 classes, (1, 16, 16) (the smallest square input paper_cnn accepts)
SYNTHETIC_SHAPE = (1, 16, 16)
SYNTHETIC_TRAIN = 2000
SYNTHETIC_TEST = 500
SYNTHETIC_CLASSES = 10


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset. ``load`` (plugins; None for the built-ins, read below) is called
    with whichever of ``data_dir`` (the resolved directory), ``seed`` and ``download`` it
    declares and returns ``(x_train, y_train, x_test, y_test)`` (x float (N, C, H, W) or
    (N, D), normalised; y integer labels) or a :class:`TensorDataset`. ``num_classes``: known
    without loading (else the labels say, at load time); ``files``: the paths under the data
    directory that must exist (checked before any actor starts); ``default_model``: what
    ``model: auto`` means for it."""

    name: str
    load: "Callable[..., Any] | None" = None
    num_classes: "int | None" = None
    default_model: str = "mlp"
    files: "Callable[[pathlib.Path], Sequence[pathlib.Path]] | None" = None


def _entry(name: str, load: Any, num_classes: "int | None" = None, default_model: str = "mlp", files=None) -> DatasetEntry:
    if not callable(load):
        raise TypeError(f"dataset {name!r} must be registered with a loader function, got {load!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"dataset {name!r}: num_classes must be an integer >= 2, got {num_classes!r}")
    return DatasetEntry(name, load, num_classes, str(default_model), files)


# name -> DatasetEntry. Plugins add theirs with ``@DATASETS.register("name", num_classes=3)``
# on a loader function (docs/extending.md).
DATASETS = Catalogue("dataset", "datasets", wrap=_entry)


def _builtin(name: str, default_model: str) -> None:
    DATASETS._store(name, DatasetEntry(name, None, 10, default_model))


for _name, _model in (("mnist", "paper_cnn"), ("fashion_mnist", "paper_cnn"), ("cifar10", "paper_cnn"), ("synthetic", "mlp")):
    _builtin(_name, _model)


def num_classes_of(name: str) -> "int | None":
    """The classes of dataset ``name`` without loading it (None: a plugin that did not say)."""
    return DATASETS.get(name).num_classes


@dataclass(frozen=True)
class TensorDataset:
    """A decoded dataset: x (N, C, H, W) float32, normalised, y (N,) int64. With ``norm``
    (mean, std) set, x is the raw uint8 images and :func:`normalise` makes a batch of them float."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    norm: "tuple[tuple[float, ...], tuple[float, ...]] | None" = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_train.shape[1:])  # type: ignore[return-value]


# ----------------------------------------------------------------------------- locating data
DEFAULT_DATA_DIR = "~/.cache/raymix/data"  # where data lives when neither data_dir nor RAYMIX_DATA_DIR says


def resolve_data_dir(configured: "str | os.PathLike | None" = None) -> pathlib.Path:
    """The data directory: ``configured`` > env ``RAYMIX_DATA_DIR`` > ``~/.cache/raymix/data``."""
    if configured is not None and str(configured) != "":
        return pathlib.Path(configured).expanduser()
    env = os.environ.get("RAYMIX_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path(DEFAULT_DATA_DIR).expanduser()


def _check_name(name: str) -> DatasetEntry:
    return DATASETS.get(name)  # ValueError naming the known datasets


def _find(path: pathlib.Path) -> "pathlib.Path | None":
    """``path`` or ``path.gz``, whichever exists."""
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.is_file() else None


def _expected_files(name: str, root: pathlib.Path) -> list[pathlib.Path]:
    if name in _IDX_DATASETS:
        raw = root / _IDX_DATASETS[name][0] / "raw"
        return [raw / f for pair in _IDX_FILES.values() for f in pair]
    if name == "cifar10":
        return [root / _CIFAR_FOLDER / f for f in _CIFAR_TRAIN + _CIFAR_TEST]
    entry = DATASETS.get(name)
    if entry.load is not None and entry.files is not None:  # a plugin that reads files
        return [root / p for p in entry.files(root)]
    return []


def _missing_files(name: str, root: pathlib.Path) -> list[pathlib.Path]:
    return [p for p in _expected_files(name, root) if _find(p) is None]


def _data_dir_source(root: pathlib.Path) -> str:
    """Where the data directory came from, in words: callers pass the directory resolved, so
    it is matched against RAYMIX_DATA_DIR and the default."""
    def same(a) -> bool:
        return pathlib.Path(a).expanduser().resolve() == root.expanduser().resolve()

    env = os.environ.get("RAYMIX_DATA_DIR")
    if env and same(env):
        return "$RAYMIX_DATA_DIR"
    if not env and same(DEFAULT_DATA_DIR):
        return "the default; RAYMIX_DATA_DIR is not set"
    return "the data_dir setting: --data-dir, or data_dir in a YAML"


def check_data_available(name: str, data_dir: "str | os.PathLike | None" = None) -> None:
    """Cheap existence check (reads nothing). ValueError for an unknown name,
    FileNotFoundError naming the directory searched, the files expected and the fix."""
    entry = _check_name(name)
    if name == "synthetic" or (entry.load is not None and entry.files is None):
        return
    root = resolve_data_dir(data_dir)
    missing = _missing_files(name, root)
    if not missing:
        if name in _IDX_DATASETS:
            _check_idx_content(name, root)
        elif name == "cifar10":  # before any actor starts; ~180 MB read, well under a second
            for f in _CIFAR_TRAIN + _CIFAR_TEST:
                read_cifar_batch(root / _CIFAR_FOLDER / f)
        return
    source = _data_dir_source(root)
    gz_note = " (each may also be gzipped, with a .gz suffix)" if name in _IDX_DATASETS else ""
    raise FileNotFoundError(
        f"dataset {name!r} not found under data directory {root} (from {source}); "
        f"missing {len(missing)} file(s){gz_note}: {', '.join(str(p) for p in missing)}. "
        f"Fix: point RAYMIX_DATA_DIR (or the data_dir setting) at a directory holding "
        f"{_expected_files(name, pathlib.Path('<dir>'))[0].parent}/..., "
        f"or call with download=True on a machine with internet access."
    )


# ----------------------------------------------------------------------------- readers
def _check_idx_header(path: pathlib.Path) -> None:
    """An idx file's header against its size, reading 16 bytes (a truncated or foreign file is
    refused before any actor starts; gzipped files are checked when read)."""
    if path.suffix == ".gz":
        return
    with open(path, "rb") as fh:
        head = fh.read(4)
        magic = int.from_bytes(head, "big") if len(head) == 4 else -1
        ndim = magic & 0xFF if magic >= 0 else 0
        if magic < 0 or (magic >> 8) & 0xFF != 0x08 or magic >> 16 != 0 or not 1 <= ndim <= 4:
            raise ValueError(f"{path}: not a uint8 idx file (corrupt or foreign)")
        dims = [int.from_bytes(fh.read(4), "big") for _ in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if path.stat().st_size != expected:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, its header says {expected} (truncated or corrupt)")


def _idx_dims(path: pathlib.Path) -> tuple[int, ...]:
    """An idx file's dimensions from its header (gzipped files: decompressing the header only)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        ndim = int.from_bytes(fh.read(4), "big") & 0xFF
        return tuple(int.from_bytes(fh.read(4), "big") for _ in range(ndim))


def _check_idx_content(name: str, root: pathlib.Path) -> None:
    """Before any actor starts: each file's header against its size, images of 28 x 28, as
    many labels as images in each split, and every label one of the 10 classes (the label
    files are read whole: 70 kB)."""
    raw = root / _IDX_DATASETS[name][0] / "raw"
    for split, (images, labels) in _IDX_FILES.items():
        ipath, lpath = _find(raw / images), _find(raw / labels)
        for path in (ipath, lpath):
            _check_idx_header(path)
        idims, ldims = _idx_dims(ipath), _idx_dims(lpath)
        if len(idims) != 3 or idims[1:] != (28, 28):
            raise ValueError(f"{ipath}: images of shape {idims[1:]}, expected {name}'s 28 x 28")
        if len(ldims) != 1 or ldims[0] != idims[0]:
            raise ValueError(f"{lpath}: {ldims[0] if ldims else 0} labels for the {idims[0]} {split} images of {ipath.name}")
        y = read_idx(lpath)
        bad = np.flatnonzero(y >= 10)
        if bad.size:
            raise ValueError(f"{lpath}: {bad.size} label(s) outside {name}'s classes 0-9 (label {int(y[bad[0]])} at index {int(bad[0])})")


def read_idx(path: "str | os.PathLike") -> np.ndarray:
    """Parse an idx file (optionally .gz): big-endian header (magic, dims), uint8 payload."""
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        buf = fh.read()
    magic = int.from_bytes(buf[0:4], "big")
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if dtype_code != 0x08 or magic >> 16 != 0:
        raise ValueError(f"{path}: not a uint8 idx file (magic {magic:#x})")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    count = int(np.prod(dims)) if dims else 0
    if len(buf) - offset != count:
        raise ValueError(f"{path}: payload has {len(buf) - offset} bytes, header says {count}")
    return np.frombuffer(buf, dtype=np.uint8, offset=offset).reshape(dims)


def _normalise(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, C, H, W) uint8 -> float32, (x/255 - mean) / std per channel."""
    x = x_uint8.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)  # on the batch's device (a GPU)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _load_idx_dataset(name: str, root: pathlib.Path, download: bool) -> tuple[torch.Tensor, ...]:
    folder, mean, std = _IDX_DATASETS[name]
    if _missing_files(name, root):
        if not download:
            check_data_available(name, str(root))  # raises the explanatory error
        import torchvision

        cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        root.mkdir(parents=True, exist_ok=True)
        out = []
        for train in (True, False):
            ds = cls(root=str(root), train=train, download=True)
            out += [ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)]
        xtr, ytr, xte, yte = out
    else:
        raw = root / folder / "raw"
        arrays = [read_idx(_find(raw / f)) for split in ("train", "test") for f in _IDX_FILES[split]]
        xtr, ytr, xte, yte = (torch.from_numpy(a.copy()) for a in arrays)
        xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)
        ytr, yte = ytr.to(torch.int64), yte.to(torch.int64)
    return xtr, ytr, xte, yte, (mean, std)


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles, and a pickle can name any callable to run. This
    one resolves only what those batches hold (a dict of str, bytes, int lists and one uint8
    numpy array; numpy scalars too): a data file from elsewhere never executes code."""

    _ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")} | {
        ("numpy", "ndarray"), ("numpy", "dtype")}  # arrays, and numpy scalars (a label list of np.int64s): data, never calls

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR-10 batch holds only arrays, lists and strings")
        return super().find_class(module, name)


def read_cifar_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one CIFAR-10 python batch, its
    content checked: 3,072 values an image, as many labels as images, every label 0-9."""
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(d, dict) or "data" not in d or not ("labels" in d or "fine_labels" in d):
        raise ValueError(f"{path}: not a CIFAR-10 python batch (expected a dict with 'data' and 'labels')")
    x = np.asarray(d["data"])
    y = np.asarray(d.get("labels", d.get("fine_labels")))
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: images of shape {x.shape[1:]} and type {x.dtype}, expected CIFAR-10's 3 x 32 x 32 uint8 (3,072 values)")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: {len(y)} labels for {len(x)} images")
    bad = np.flatnonzero((y < 0) | (y >= 10))
    if bad.size:
        raise ValueError(f"{path}: {bad.size} label(s) outside CIFAR-10's classes 0-9 (label {int(y[bad[0]])} at index {int(bad[0])})")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _load_cifar10(root: pathlib.Path, download: bool) -> tuple[torch.Tensor, ...]:
    if _missing_files("cifar10", root):
        if not download:
            check_data_available("cifar10", str(root))
        import torchvision

        root.mkdir(parents=True, exist_ok=True)
        out = []
        for train in (True, False):
            ds = torchvision.datasets.CIFAR10(root=str(root), train=train, download=True)
            out += [torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.targets, dtype=torch.int64)]
        xtr, ytr, xte, yte = out
    else:
        def read(files):
            batches = [read_cifar_batch(root / _CIFAR_FOLDER / f) for f in files]
            return (torch.from_numpy(np.concatenate([x for x, _ in batches])),
                    torch.from_numpy(np.concatenate([y for _, y in batches])))

        (xtr, ytr), (xte, yte) = read(_CIFAR_TRAIN), read(_CIFAR_TEST)
        # pickles are already (N, 3, 32, 32); the torchvision path gives (N, 32, 32, 3)
        return xtr, ytr, xte, yte, (_CIFAR_MEAN, _CIFAR_STD)
    xtr, xte = xtr.permute(0, 3, 1, 2).contiguous(), xte.permute(0, 3, 1, 2).contiguous()
    return xtr, ytr, xte, yte, (_CIFAR_MEAN, _CIFAR_STD)


def _synthetic(seed: int) -> tuple[torch.Tensor, ...]:
    """10 class prototypes (fixed by ``seed``), each sample = 0.2 * prototype + N(0, 1)
    noise, then standardised. Learnable (a linear model can reach ~90%+), not trivial."""
    c, h, w = SYNTHETIC_SHAPE
    d = c * h * w
    protos = torch.randn(SYNTHETIC_CLASSES, d, generator=torch_generator(seed, "synthetic", "prototypes"))

    def split(n: int, part: str):
        g = torch_generator(seed, "synthetic", part)
        y = torch.randint(0, SYNTHETIC_CLASSES, (n,), generator=g, dtype=torch.int64)
        x = 0.2 * protos[y] + torch.randn(n, d, generator=g)
        return x, y

    xtr, ytr = split(SYNTHETIC_TRAIN, "train")
    xte, yte = split(SYNTHETIC_TEST, "test")
    # numpy's float64 pairwise sums, one thread: torch's float32 mean and std split the sum over
    # its intra-op threads, so the data (and every record after it) depended on the thread
    # count of the process that built it (a driver at 1 thread, a trial at 2: measured).
    a = xtr.numpy().astype(np.float64)
    mu, sd = float(a.mean()), float(a.std(ddof=1))
    norm = lambda x: ((x - mu) / sd).to(torch.float32).reshape(-1, c, h, w).contiguous()  # noqa: E731
    return norm(xtr), ytr, norm(xte), yte


def _subset(x: torch.Tensor, y: torch.Tensor, limit: "int | None", seed: int, part: str):
    if limit is None or limit >= x.shape[0]:
        return x, y
    if limit < 1:
        raise ValueError(f"{part}_limit must be >= 1, got {limit}")
    idx = torch.randperm(x.shape[0], generator=torch_generator(seed, "subset", part))[:limit]
    return x[idx].contiguous(), y[idx].contiguous()


def load_dataset(
    name: str,
    data_dir: "str | os.PathLike | None" = None,
    download: bool = False,
    train_limit: "int | None" = None,
    test_limit: "int | None" = None,
    seed: int = 0,
    raw: bool = False,
) -> TensorDataset:
    """Load ``name`` as ready tensors. ``train_limit``/``test_limit`` keep the first k samples
    after a shuffle seeded by ``seed`` (no stratification). ``seed`` also fixes the synthetic data.

    ``raw=True`` keeps image datasets as uint8 (4x smaller: what the runtime ships to its
    actors) with ``norm`` set; :func:`normalise` of a batch then gives exactly the floats
    ``raw=False`` would have held (the same operations, elementwise)."""
    entry = _check_name(name)
    root = resolve_data_dir(data_dir)
    norm = None
    if entry.load is not None:
        xtr, ytr, xte, yte, num_classes, norm = _load_plugin(entry, root, download, seed)
    elif name in _IDX_DATASETS:
        xtr, ytr, xte, yte, norm = _load_idx_dataset(name, root, download)
        num_classes = 10
    elif name == "cifar10":
        xtr, ytr, xte, yte, norm = _load_cifar10(root, download)
        num_classes = 10
    else:
        xtr, ytr, xte, yte = _synthetic(seed)
        num_classes = SYNTHETIC_CLASSES
    xtr, ytr = _subset(xtr, ytr, train_limit, seed, "train")
    xte, yte = _subset(xte, yte, test_limit, seed, "test")
    if norm is not None and not raw:
        xtr, xte, norm = normalise(xtr, norm), normalise(xte, norm), None
    return TensorDataset(name, xtr, ytr, xte, yte, num_classes, norm)


def _load_plugin(entry: DatasetEntry, root: pathlib.Path, download: bool, seed: int):
    """Call a plugin's loader with the arguments it declares and check what it returns."""
    import inspect

    offered = {"data_dir": root, "seed": seed, "download": download}
    try:
        params = inspect.signature(entry.load).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = offered if takes_all else {k: v for k, v in offered.items() if k in params}
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        kwargs = {}
    out = entry.load(**kwargs)
    what = f"dataset {entry.name!r}"
    norm = None
    if isinstance(out, TensorDataset):
        xtr, ytr, xte, yte, norm = out.x_train, out.y_train, out.x_test, out.y_test, out.norm
    elif isinstance(out, (tuple, list)) and len(out) == 4:
        xtr, ytr, xte, yte = out
    else:
        raise TypeError(f"{what}: the loader must return (x_train, y_train, x_test, y_test) or a TensorDataset, got {type(out).__name__}")
    arrays = []
    for part, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.dim() == 2:
            x = x.reshape(x.shape[0], 1, 1, x.shape[1])  # (N, D) features: one 1x1xD image each
        if x.dim() != 4 or x.shape[0] == 0:
            raise ValueError(f"{what}: x_{part} must be a non-empty (N, C, H, W) or (N, D) tensor, got shape {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"{what}: y_{part} must be {x.shape[0]} integer labels, got {y.dtype} of shape {tuple(y.shape)}")
        if norm is None:
            x = x.to(torch.float32)
        arrays += [x.contiguous(), y.to(torch.int64).contiguous()]
    xtr, ytr, xte, yte = arrays
    if tuple(xtr.shape[1:]) != tuple(xte.shape[1:]):
        raise ValueError(f"{what}: train inputs are {tuple(xtr.shape[1:])} but test inputs are {tuple(xte.shape[1:])}")
    num_classes = entry.num_classes or int(max(int(ytr.max()), int(yte.max()))) + 1
    lo, hi = int(min(ytr.min(), yte.min())), int(max(ytr.max(), yte.max()))
    if lo < 0 or hi >= num_classes or num_classes < 2:
        raise ValueError(f"{what}: labels must lie in [0, {num_classes}) with at least 2 classes, got range [{lo}, {hi}]")
    return xtr, ytr, xte, yte, num_classes, norm


def normalise(x: torch.Tensor, norm: "tuple[Sequence[float], Sequence[float]] | None") -> torch.Tensor:
    """A raw uint8 batch as the float32 inputs, ``(x/255 - mean) / std`` per channel; ``norm``
    None: ``x`` is already float and returned as it is."""
    return x if norm is None else _normalise(x, *norm)


# ----------------------------------------------------------------------------- partitions
def partition(
    labels: torch.Tensor,
    num_workers: int,
    kind: str = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    num_classes: "int | None" = None,
) -> list[torch.Tensor]:
    """Split sample indices among ``num_workers`` (honest) workers; one int64 index tensor each.

    * ``iid``: seeded shuffle, equal shards of ``N // num_workers`` (the remainder is dropped).
    * ``label_sorted`` (MixTailor's non-iid): worker i holds class ``i mod num_classes``; the
      workers sharing a class split its samples (in index order) into contiguous, near-equal
      parts. With fewer workers than classes the remaining classes are unused. Deterministic
      (``seed`` unused). ValueError if a worker would get no samples.
    * ``dirichlet``: for each class, proportions ~ Dir(alpha) over workers (seeded) split the
      shuffled class indices. Every worker is made non-empty by a deterministic repair: while a
      worker is empty it takes one sample (the last) from the currently largest shard.
      Requires N >= num_workers.

    Long on purpose: one case per partition kind, each a few lines, read top to bottom.
    """
    if kind not in PARTITIONS:
        raise ValueError(f"unknown partition kind {kind!r}; known kinds: {', '.join(PARTITIONS)}")
    if int(num_workers) != num_workers or num_workers < 1:
        raise ValueError(f"num_workers must be a positive integer, got {num_workers}")
    num_workers = int(num_workers)
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1).cpu()
    n = labels.numel()
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 0

    if kind == "iid":
        size = n // num_workers
        if size < 1:
            raise ValueError(f"iid partition of {n} samples over {num_workers} workers leaves workers empty")
        perm = torch.randperm(n, generator=torch_generator(seed, "partition", "iid"))
        return [perm[i * size : (i + 1) * size].clone() for i in range(num_workers)]

    if kind == "label_sorted":
        if num_classes < 1:
            raise ValueError("label_sorted partition needs at least one class")
        shards: list[torch.Tensor] = [torch.empty(0, dtype=torch.int64)] * num_workers
        for c in range(min(num_classes, num_workers)):
            holders = list(range(c, num_workers, num_classes))
            idx = torch.nonzero(labels == c).reshape(-1)
            for w, part in zip(holders, torch.tensor_split(idx, len(holders))):
                if part.numel() == 0:
                    raise ValueError(
                        f"label_sorted: class {c} has {idx.numel()} samples, too few for its {len(holders)} worker(s)"
                    )
                shards[w] = part.clone()
        return shards

    # dirichlet
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    if n < num_workers:
        raise ValueError(f"dirichlet partition of {n} samples over {num_workers} workers leaves workers empty")
    rng = numpy_generator(seed, "partition", "dirichlet")
    lab = labels.numpy()
    parts: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
    for c in range(num_classes):
        idx = np.flatnonzero(lab == c)
        if idx.size == 0:
            continue
        idx = rng.permutation(idx)
        p = rng.dirichlet(np.full(num_workers, float(alpha)))
        cuts = (np.cumsum(p)[:-1] * idx.size).astype(np.int64)
        for w, chunk in enumerate(np.split(idx, cuts)):
            parts[w].append(chunk)
    out = [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]
    for w in range(num_workers):
        if out[w].size == 0:
            donor = max(range(num_workers), key=lambda j: (out[j].size, -j))
            out[w], out[donor] = out[donor][-1:], out[donor][:-1]
    return [torch.from_numpy(o.astype(np.int64)) for o in out]


# ----------------------------------------------------------------------------- batches
def sample_batches(
    shard_indices: Sequence[torch.Tensor],
    batch_size: int,
    seed: int,
    step: int,
    worker_ids: Sequence[int],
) -> torch.Tensor:
    """(W, B) dataset indices: row j is worker ``worker_ids[j]``'s batch at ``step``, drawn from
    ``shard_indices[j]`` WITHOUT replacement (with replacement only if the shard is smaller
    than the batch), from the stateless stream ``torch_generator(seed, "batch", worker, step)``,
    so a retried or resumed step draws the same batch whatever else was packed with it."""
    if len(shard_indices) != len(worker_ids):
        raise ValueError(f"{len(shard_indices)} shards but {len(worker_ids)} worker ids")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = []
    for shard, wid in zip(shard_indices, worker_ids):
        shard = torch.as_tensor(shard, dtype=torch.int64)
        m = shard.numel()
        if m == 0:
            raise ValueError(f"worker {wid} has an empty shard")
        g = torch_generator(seed, "batch", int(wid), int(step))
        if m >= batch_size:
            pos = torch.randperm(m, generator=g)[:batch_size]
        else:
            pos = torch.randint(0, m, (batch_size,), generator=g)
        rows.append(shard[pos.to(shard.device)])
    if not rows:
        return torch.empty(0, batch_size, dtype=torch.int64)
    return torch.stack(rows)
