"""Datasets as in-memory arrays with deterministic, step-indexed batching.

The batch for training step s is a pure function of (data seed, s): example positions are laid out
in epochs, each epoch a permutation drawn from numpy's Generator seeded with (seed, epoch). A run that
resumes at step s therefore sees exactly the batches an uninterrupted run would have seen.
"""
import dataclasses
import os
import warnings
from typing import Optional, Tuple

import numpy as np

from ebm_jax.data import images, sources, toys


class DataError(ValueError):
    """A dataset name, file or shape the library cannot use."""


@dataclasses.dataclass
class Dataset:
    name: str
    train: np.ndarray            # (N, *shape) float32
    test: np.ndarray             # (M, *shape) float32
    seed: int
    toy: Optional[toys.ToySpec] = None
    extent: Optional[float] = None   # half-width of the evaluation grid for 2-D data
    # anomaly-detection sets (MNIST with a held-out digit, KDD99): 1 = anomalous test example, and the
    # fraction of test rows that a detector flags (KDD's protocol: 0.2; None = the anomalies' share)
    test_labels: Optional[np.ndarray] = None
    flagged_fraction: Optional[float] = None
    _perm_cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_2d(self) -> bool:
        return self.shape == (2,)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            self._perm_cache.clear()
            self._perm_cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.train))
        return self._perm_cache[epoch]

    def indices(self, step: int, per_step: int) -> np.ndarray:
        n = len(self.train)
        start = int(step) * per_step
        pos = np.arange(start, start + per_step)
        epochs, offsets = pos // n, pos % n
        out = np.empty(per_step, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(int(e))[offsets[sel]]
        return out

    def batch(self, step: int, batch_size: int, num_batches: int = 1, rows: slice = slice(None)) -> np.ndarray:
        """(num_batches, batch_size, *shape) training examples for iteration `step`; `rows` selects the
        rows of each of the num_batches global batches that one process reads (its shard)."""
        idx = self.indices(step, batch_size * num_batches).reshape(num_batches, batch_size)[:, rows]
        return self.train[idx]


def _load_array_file(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise DataError(f"data.path {path!r} does not exist; give a .npy or .npz file of vectors (N, D) or images "
                        "(N, H, W[, C]), or a folder of image files.")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                key = next((k for k in ("x", "data", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise DataError(f"data.path {path!r} holds arrays {keys}; name the data array 'x' or 'data', "
                                    "or store a single array.")
                arr = f[key]
        else:
            raise DataError(f"data.path {path!r} has extension {ext!r}; valid extensions are '.npy' and '.npz'.")
    except DataError:
        raise
    except Exception as e:  # corrupt file, pickled objects, ...
        raise DataError(f"data.path {path!r} could not be read as a numpy array ({type(e).__name__}: {e}).") from e
    if arr.ndim not in (2, 3, 4) or arr.shape[0] < 2 or min(arr.shape[1:]) < 1:
        raise DataError(f"data.path {path!r} holds an array of shape {arr.shape}; valid are vectors (N, D) or "
                        "images (N, H, W) / (N, H, W, C), with N >= 2 rows.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"data.path {path!r} holds dtype {arr.dtype}; valid is a real numeric array.")
    return arr


IMAGE_NAMES = ("mnist", "fashion_mnist", "cifar10", "celeb_a", "stacked_mnist", "mnist_anomaly")
TABULAR_NAMES = ("kdd99",)


def _split_off_test(arr, test_fraction, seed):
    perm = np.random.default_rng(seed).permutation(len(arr))
    n_test = max(1, int(round(len(arr) * float(test_fraction))))
    if n_test >= len(arr):
        raise DataError(f"data.test_fraction={test_fraction} leaves no training rows; use a value in [0, 1).")
    if isinstance(arr, sources.IndexedArray):  # keep image sets lazy: nothing is read until a batch asks
        return arr.take(perm[n_test:]), arr.take(perm[:n_test])
    return arr[perm[n_test:]], arr[perm[:n_test]]


def _from_path(data_config, seed) -> Dataset:
    path = str(data_config.path)
    name = os.path.basename(path.rstrip("/"))
    if os.path.isdir(path):
        arr = sources.image_folder(path, int(data_config.get("image_size", 64)))
        train, test = _split_off_test(arr, data_config.test_fraction, seed)
        return Dataset(name=name, train=train, test=test, seed=seed)
    arr = _load_array_file(path)
    if arr.ndim > 2:
        train, test = _split_off_test(sources.image_array(arr, path), data_config.test_fraction, seed)
        return Dataset(name=name, train=train, test=test, seed=seed)
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"data.path {path!r} contains NaN or infinite values; clean them before training.")
    train, test = _split_off_test(arr, data_config.test_fraction, seed)
    scaling = str(data_config.get("scaling", "none"))
    if scaling not in VECTOR_SCALINGS:
        raise DataError(f"data.scaling={scaling!r} is invalid; valid values are {list(VECTOR_SCALINGS)}.")
    train, test = _scale_vectors(train, test, scaling)
    big = float(np.max(np.abs(train)))
    if big > LARGE_VALUE:
        warnings.warn(f"data.path {path!r} holds values up to {big:.3g}; the networks are initialised for inputs of "
                      "order 1, so training may diverge: set --config.data.scaling=standardize (or minmax), or "
                      "rescale the file.", stacklevel=2)
    train, test = train.astype(np.float32), test.astype(np.float32)
    extent = float(np.ceil(np.abs(np.concatenate([train, test])).max() * 1.1 * 10) / 10) if arr.shape[1] == 2 else None
    return Dataset(name=name, train=train, test=test, seed=seed, extent=extent)


VECTOR_SCALINGS = ("none", "standardize", "minmax")
LARGE_VALUE = 1e4   # |x| above this in vector data gets a warning naming data.scaling


def _scale_vectors(train, test, scaling):
    """data.scaling of vector data by the training rows' statistics: 'standardize' (zero mean, unit std
    per feature), 'minmax' (each feature to [-1, 1]), 'none'."""
    if scaling == "standardize":
        mean, std = train.mean(axis=0), train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return (train - mean) / std, (test - mean) / std
    if scaling == "minmax":
        lo, hi = train.min(axis=0), train.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return 2.0 * (train - lo) / span - 1.0, 2.0 * (test - lo) / span - 1.0
    return train, test


def _mnist_format(name: str, data_dir: str, split: str, num_rows=None):
    """MNIST / Fashion-MNIST from idx files when data_dir holds them, else from TFDS."""
    if images.has_idx_files(data_dir) or (split == "test" and images.has_idx_files(data_dir, "test")):
        arr = images.read_idx_split(data_dir, split)[..., None]
        return sources.in_memory(arr if num_rows is None else arr[:num_rows])
    return sources.tfds_split(name, split, data_dir, num_rows)


def _image_dataset(name: str, data_config, seed) -> Dataset:
    data_dir = str(data_config.get("data_dir", "") or "")
    num_test = data_config.get("num_test", None)  # None: the whole test split
    num_test = None if num_test is None else int(num_test)
    if name in ("mnist", "fashion_mnist"):
        return Dataset(name=name, train=_mnist_format(name, data_dir, "train"),
                       test=_mnist_format(name, data_dir, "test", num_test), seed=seed)
    if name in ("cifar10", "celeb_a"):
        return Dataset(name=name, train=sources.tfds_split(name, "train", data_dir),
                       test=sources.tfds_split(name, "test", data_dir, num_test), seed=seed)
    if name == "stacked_mnist":
        stacks = int(data_config.get("num_stacks", 3))
        if stacks not in (3, 4):
            raise DataError(f"data.num_stacks={stacks} is invalid; StackedMNIST has 3 or 4 stacks (MEG Sec. 4.2).")
        num_train = int(data_config.get("num_train", 60000))
        train = sources.stacked_mnist(_mnist_format("mnist", data_dir, "train"), stacks, num_train, seed)
        test = sources.stacked_mnist(_mnist_format("mnist", data_dir, "test"), stacks, num_test or 10000, seed + 1)
        return Dataset(name=f"stacked_mnist{stacks}", train=train, test=test, seed=seed)
    # mnist_anomaly: all 70,000 MNIST images (train + test files), one digit held out
    digit = int(data_config.get("anomaly_digit", 1))
    if not 0 <= digit <= 9:
        raise DataError(f"data.anomaly_digit={digit} is invalid; it is the held-out digit, 0 to 9.")
    if not images.has_idx_files(data_dir):
        raise DataError(f"data.name='mnist_anomaly' needs data.data_dir with the MNIST idx files (images and "
                        f"labels); {data_dir!r} has no train-images-idx3-ubyte.gz.")
    x = np.concatenate([images.read_idx_split(data_dir, s) for s in ("train", "test")])[..., None]
    y = np.concatenate([images.read_idx_split(data_dir, s, labels=True) for s in ("train", "test")])
    train, test, labels = sources.mnist_anomaly_split(x, y, digit, seed)
    return Dataset(name=f"mnist_anomaly{digit}", train=sources.in_memory(train), test=sources.in_memory(test),
                   seed=seed, test_labels=labels)


def get_dataset(data_config) -> Dataset:
    """Builds the dataset named by config.data: a toy, an image set, KDD99, or a file / folder in data.path."""
    seed = int(data_config.seed)
    if data_config.get("path", None):
        return _from_path(data_config, seed)
    name = str(data_config.name)
    if name in IMAGE_NAMES:
        return _image_dataset(name, data_config, seed)
    if name == "kdd99":
        data_dir = str(data_config.get("data_dir", "") or "")
        features, labels = sources.read_kdd99(data_dir)
        scaling = str(data_config.get("kdd_scaling", "minmax"))
        if scaling not in ("minmax", "none"):
            raise DataError(f"data.kdd_scaling={scaling!r} is invalid; valid values are 'minmax' and 'none'.")
        train, test, test_labels = sources.kdd99_split(features, labels, seed, scaling)
        return Dataset(name=name, train=train, test=test, seed=seed, test_labels=test_labels,
                       flagged_fraction=sources.KDD_TEST_ANOMALY_FRACTION)
    if name not in toys.TOYS:
        raise DataError(f"data.name {name!r} is not a known dataset; valid names are "
                        f"{sorted(toys.TOYS) + list(IMAGE_NAMES) + list(TABULAR_NAMES)} (or set data.path to a "
                        ".npy/.npz file or a folder of images).")
    spec = toys.get_toy(name)
    rng = np.random.default_rng([seed, 12345])
    train = spec.sample(rng, int(data_config.num_train))
    test = spec.sample(rng, int(data_config.num_test))
    return Dataset(name=str(data_config.name), train=train, test=test, seed=seed, toy=spec,
                   extent=toys.TOY_EXTENT)
