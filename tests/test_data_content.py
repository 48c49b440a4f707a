"""Data checked in content before any actor starts: a label outside the dataset's classes, a
label file that does not match its images, images of the wrong size. Each is one line, exit
2, before Ray starts (it used to crash the server actor with a 143-line Ray traceback)."""
from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

from raymix.cli import main

ARGS = ["run", "--dataset", "mnist", "--n", "7", "--f", "1", "--steps", "2", "--eval-every", "1", "--quiet"]


@pytest.fixture
def copy(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for p in (Path(mnist_dir) / "MNIST" / "raw").iterdir():
        if not p.name.endswith(".gz"):
            shutil.copy(p, raw / p.name)
    return tmp_path, raw


def refused(capsys, data: Path, *needles: str) -> None:
    assert main(ARGS + ["--data-dir", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_a_label_outside_the_classes_is_refused(copy, capsys):
    data, raw = copy
    with open(raw / "train-labels-idx1-ubyte", "r+b") as fh:
        fh.seek(8 + 1234)  # header: magic, count
        fh.write(bytes([200]))
    refused(capsys, data, "1 label(s) outside mnist's classes 0-9 (label 200 at index 1234)")


def test_labels_that_do_not_match_the_images_are_refused(copy, capsys):
    data, raw = copy
    path = raw / "t10k-labels-idx1-ubyte"
    body = path.read_bytes()
    path.write_bytes(body[:4] + struct.pack(">I", 9999) + body[8:8 + 9999])  # a consistent file of 9,999 labels
    refused(capsys, data, "9999 labels for the 10000 test images")


def test_images_of_another_size_are_refused(copy, capsys):
    data, raw = copy
    path = raw / "t10k-images-idx3-ubyte"
    body = path.read_bytes()
    path.write_bytes(body[:8] + struct.pack(">II", 14, 56) + body[16:])  # same bytes, 14 x 56 images
    refused(capsys, data, "images of shape (14, 56), expected mnist's 28 x 28")


@pytest.mark.parametrize("how", ["env", "setting", "default"])
def test_a_missing_dataset_says_where_its_directory_came_from(how, tmp_path, monkeypatch):
    """Callers pass the directory already resolved: the message still names its source."""
    from raymix.data import check_data_available, resolve_data_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if how == "env":
        monkeypatch.setenv("RAYMIX_DATA_DIR", str(tmp_path / "from_env"))
    else:
        monkeypatch.delenv("RAYMIX_DATA_DIR", raising=False)
    configured = str(tmp_path / "from_setting") if how == "setting" else None
    want = {"env": "(from $RAYMIX_DATA_DIR)", "setting": "(from the data_dir setting",
            "default": "(from the default; RAYMIX_DATA_DIR is not set)"}[how]
    with pytest.raises(FileNotFoundError, match=re.escape(want)):
        check_data_available("mnist", resolve_data_dir(configured))


def _cifar(root: Path, batch=None) -> Path:
    """CIFAR-10's python layout, small: 4 images a batch, labels 0-3."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {"batch_label": "x", "labels": [0, 1, 2, 3], "data": np.zeros((4, 3072), np.uint8), "filenames": ["a"] * 4}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f).write_bytes(pickle.dumps(good))
    if batch is not None:
        (folder / "data_batch_2").write_bytes(batch)
    return root


def test_cifar_batches_load_without_running_code_and_are_checked(tmp_path):
    import os
    import pickle

    import numpy as np

    from raymix.data import check_data_available, load_dataset

    check_data_available("cifar10", _cifar(tmp_path / "ok"))
    data = load_dataset("cifar10", data_dir=tmp_path / "ok", raw=True)
    assert tuple(data.x_train.shape) == (20, 3, 32, 32) and data.y_train.tolist() == [0, 1, 2, 3] * 5

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with pytest.raises(ValueError, match=r"data_batch_2: not a CIFAR-10 python batch \(refusing posix.system"):
        check_data_available("cifar10", _cifar(tmp_path / "evil", pickle.dumps({"data": Payload(), "labels": []})))
    assert not (tmp_path / "pwned").exists()
    bad = pickle.dumps({"labels": [0, 1, 2, 200], "data": np.zeros((4, 3072), np.uint8)})
    with pytest.raises(ValueError, match=r"1 label\(s\) outside CIFAR-10's classes 0-9 \(label 200 at index 3\)"):
        check_data_available("cifar10", _cifar(tmp_path / "labels", bad))
    shape = pickle.dumps({"labels": [0, 1], "data": np.zeros((2, 784), np.uint8)})
    with pytest.raises(ValueError, match=r"expected CIFAR-10's 3 x 32 x 32 uint8"):
        check_data_available("cifar10", _cifar(tmp_path / "shape", shape))
