"""Datasets as in-memory arrays with deterministic, step-indexed batching.

The batch for training step s is a pure function of (data seed, s): example positions are laid out
in epochs, each epoch a permutation drawn from numpy's Generator seeded with (seed, epoch). A run that
resumes at step s therefore sees exactly the batches an uninterrupted run would have seen.
"""
import dataclasses
import os
from typing import Optional, Tuple

import numpy as np

from ebm_jax.data import images, toys


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
        raise DataError(f"data.path {path!r} does not exist; give a .npy or .npz file holding an array of shape (N, D).")
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
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise DataError(f"data.path {path!r} holds an array of shape {arr.shape}; valid is a 2-D array (N, D) "
                        "with N >= 2 rows.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"data.path {path!r} holds dtype {arr.dtype}; valid is a real numeric array.")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"data.path {path!r} contains NaN or infinite values; clean them before training.")
    return arr


def get_dataset(data_config) -> Dataset:
    """Builds the dataset named by config.data (a toy name, or a file through data.path)."""
    seed = int(data_config.seed)
    path = data_config.get("path", None)
    if path:
        arr = _load_array_file(str(path))
        perm = np.random.default_rng(seed).permutation(len(arr))
        n_test = max(1, int(round(len(arr) * float(data_config.test_fraction))))
        if n_test >= len(arr):
            raise DataError(f"data.test_fraction={data_config.test_fraction} leaves no training rows; use a value in [0, 1).")
        test, train = arr[perm[:n_test]], arr[perm[n_test:]]
        extent = None
        if arr.shape[1] == 2:
            extent = float(np.ceil(np.abs(arr).max() * 1.1 * 10) / 10)
        return Dataset(name=os.path.basename(str(path)), train=train, test=test, seed=seed, extent=extent)
    name = str(data_config.name)
    if name in images.IMAGE_DATASETS:
        train, test = images.load_mnist(str(data_config.get("data_dir", "") or ""))
        return Dataset(name=name, train=train, test=test, seed=seed)
    if name not in toys.TOYS:
        raise DataError(f"data.name {name!r} is not a known dataset; valid names are "
                        f"{sorted(toys.TOYS) + list(images.IMAGE_DATASETS)} (or set data.path to a .npy/.npz "
                        "file of shape (N, D)).")
    spec = toys.get_toy(name)
    rng = np.random.default_rng([seed, 12345])
    train = spec.sample(rng, int(data_config.num_train))
    test = spec.sample(rng, int(data_config.num_test))
    return Dataset(name=str(data_config.name), train=train, test=test, seed=seed, toy=spec,
                   extent=toys.TOY_EXTENT)
