"""Image datasets read from local files (no download), scaled to [-1, 1] as EBM-BB Appendix C does.

MNIST: config.data.data_dir must hold the four idx files of the original distribution
(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz; gzipped or not). Images come out as (N, 28, 28, 1) float32.
"""
import gzip
import os

import numpy as np

_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
_LABEL_FILES = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}


def read_idx(path: str) -> np.ndarray:
    """Reads an idx file (optionally gzipped) into a numpy array of its stored shape."""
    if "://" in path:  # a bucket (gs://...), read through orbax's path library
        from etils import epath
        raw = epath.Path(path).read_bytes()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    nd = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * nd)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} bytes of data for a header shape {shape}")
    return data.reshape(shape)


def _find(data_dir: str, stem: str):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if "://" in path:
            from etils import epath
            if epath.Path(path).exists():
                return path
        elif os.path.exists(path):
            return path
    return None


def read_idx_split(data_dir: str, split: str, field: str = "data.data_dir", labels: bool = False) -> np.ndarray:
    """One split ('train' or 't10k'/'test') of an MNIST-format dataset (MNIST, Fashion-MNIST) in
    `data_dir` as stored: images (N, 28, 28) uint8, or with labels=True the labels (N,).
    `field` names the config field in errors."""
    from ebm_jax.data.datasets import DataError
    key = "test" if split in ("test", "t10k") else split
    stem = (_LABEL_FILES if labels else _FILES)[key]
    path = _find(data_dir, stem) if data_dir else None
    if path is None:
        raise DataError(f"{field} {data_dir!r} has no {stem}.gz (or {stem}); it must be a folder holding the "
                        "idx files of an MNIST-format dataset (nothing is downloaded).")
    try:
        arr = read_idx(path)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"idx file {path!r} could not be read ({e}); replace it with the original idx file.") from e
    if labels and arr.ndim != 1:
        raise DataError(f"idx file {path!r} holds an array of shape {arr.shape}; a label file holds (N,).")
    if not labels and (arr.ndim != 3 or arr.shape[1:] != (28, 28)):
        raise DataError(f"idx file {path!r} holds images of shape {arr.shape[1:]}; valid is (28, 28).")
    return arr


def has_idx_files(data_dir: str, split: str = "train") -> bool:
    """Whether data_dir holds the images file of `split` ('train' or 'test')."""
    return bool(data_dir) and _find(data_dir, _FILES[split]) is not None


def load_idx_split(data_dir: str, split: str, field: str = "data.data_dir"):
    """One split of an MNIST-format dataset as (N, 28, 28, 1) float32 in [-1, 1]."""
    from ebm_jax.data.sources import to_unit_range
    return to_unit_range(read_idx_split(data_dir, split, field))[..., None]
