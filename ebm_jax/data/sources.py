"""Image and tabular datasets beyond the toys: TFDS data sources, local files, StackedMNIST, KDD Cup 99
and the MNIST anomaly protocol. Everything comes out as float32 in [-1, 1] (images) or min-max scaled
features (KDD), in arrays that are read by index, so that a process reads only the rows of the batches
it feeds (its shard) and a large set (CelebA) is never decoded whole.

Where the data come from (config.data):
  name in {mnist, fashion_mnist}: the idx files in data_dir when they are there (the format of
      ../shared/data here), else TFDS;
  name in {cifar10, celeb_a}: TFDS `tfds.data_source(name, data_dir=data_dir)`, which reads a dataset
      prepared in array_record format (no TensorFlow needed, nothing downloaded at run time);
  name = stacked_mnist: data.num_stacks (3 or 4) MNIST digits as channels, MEG Sec. 4.2;
  name = mnist_anomaly: MNIST with data.anomaly_digit held out as the anomaly class (MEG Table 4);
  name = kdd99: the KDD Cup 99 10% file in data_dir (MEG Table 3, DAGMM's protocol);
  path = a folder of images, or an .npz / .npy of images (N, H, W[, C]).
"""
import csv
import gzip
import os
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

TFDS_IMAGE_DATASETS = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3),
                       "celeb_a": (64, 64, 3)}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CELEBA_CROP = 108   # the usual 64x64 CelebA: a centred 108x108 crop of the 218x178 images, resized


def _data_error(msg):
    from ebm_jax.data.datasets import DataError
    return DataError(msg)


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1] (EBM-BB Appendix C's scaling, used for every image set)."""
    return images.astype(np.float32) / 127.5 - 1.0


class IndexedArray:
    """A read-only array of `length` rows of shape `row_shape`, materialised only for the rows asked for:
    x[i], x[a:b], x[index_array] call `fetch(indices) -> (len(indices), *row_shape) float32`."""

    def __init__(self, fetch: Callable[[np.ndarray], np.ndarray], length: int, row_shape: Sequence[int]):
        self._fetch, self._length, self.row_shape = fetch, int(length), tuple(int(s) for s in row_shape)

    @property
    def shape(self) -> Tuple[int, ...]:
        return (self._length,) + self.row_shape

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        if isinstance(key, slice):
            idx = np.arange(self._length)[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + self._length, idx)
            if idx.size and (idx.min() < 0 or idx.max() >= self._length):
                raise IndexError(f"index out of range for {self._length} rows")
        if idx.size == 0:
            return np.zeros((0,) + self.row_shape, np.float32)
        out = np.asarray(self._fetch(idx.ravel().astype(np.int64)), np.float32)  # fetch takes 1-D indices
        return out.reshape(idx.shape + self.row_shape)

    def take(self, indices) -> "IndexedArray":
        """The rows `indices` as another lazy array (a train / test split that reads nothing yet)."""
        indices = np.asarray(indices, np.int64)
        return IndexedArray(lambda idx: self._fetch(indices[idx]), len(indices), self.row_shape)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def in_memory(images_uint8: np.ndarray) -> IndexedArray:
    """uint8 images kept as uint8 (4x smaller than float32), converted per batch."""
    return IndexedArray(lambda idx: to_unit_range(images_uint8[idx]), len(images_uint8), images_uint8.shape[1:])


# ---------------------------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------------------------

def _center_crop_resize(img: np.ndarray, crop: Optional[int], size: Tuple[int, int]) -> np.ndarray:
    from PIL import Image
    if crop:
        h, w = img.shape[:2]
        c = min(crop, h, w)
        top, left = (h - c) // 2, (w - c) // 2
        img = img[top:top + c, left:left + c]
    if img.shape[:2] != size:
        pil = Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img)
        img = np.asarray(pil.resize((size[1], size[0]), Image.BICUBIC))
        if img.ndim == 2:
            img = img[..., None]
    return img


def tfds_split(name: str, split: str, data_dir: str, num_rows: Optional[int] = None) -> IndexedArray:
    """One split of a TFDS image dataset through `tfds.data_source` (random access, no TensorFlow),
    images in [-1, 1]; celeb_a is centre-cropped to 108x108 and resized to 64x64."""
    import tensorflow_datasets as tfds
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # not prepared, or prepared as TFRecord (no random access)
        where = f"data.data_dir={data_dir!r}" if data_dir else "the default TFDS data_dir (~/tensorflow_datasets)"
        raise _data_error(
            f"TFDS dataset {name!r} ({split}) cannot be read from {where} ({type(e).__name__}); prepare it once "
            f"where there is internet with `tfds build {name} --file_format=array_record --data_dir=DIR` and "
            f"set data.data_dir=DIR (nothing is downloaded at run time).") from e
    shape = TFDS_IMAGE_DATASETS[name]
    crop = CELEBA_CROP if name == "celeb_a" else None

    def fetch(idx):
        # one record at a time: data sources' batched __getitems__ is not available under every backend
        return to_unit_range(np.stack([_center_crop_resize(np.asarray(source[int(i)]["image"]), crop, shape[:2])
                                       for i in idx]))

    n = len(source) if num_rows is None else min(len(source), int(num_rows))
    return IndexedArray(fetch, n, shape)


def tfds_labels(name: str, split: str, data_dir: str) -> np.ndarray:
    import tensorflow_datasets as tfds
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    return np.asarray([int(source[i]["label"]) for i in range(len(source))])


# ---------------------------------------------------------------------------------------------
# Local files: a folder of images, an array file of images
# ---------------------------------------------------------------------------------------------

def image_folder(path: str, size: int) -> IndexedArray:
    """Every image file under `path` (sorted), centre-cropped to a square and resized to size x size RGB."""
    from PIL import Image
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if len(files) < 2:
        raise _data_error(f"data.path {path!r} is a folder with {len(files)} image files; it needs at least 2 "
                          f"(extensions {list(IMAGE_EXTENSIONS)}).")

    def load(i):
        try:
            with Image.open(files[i]) as im:
                img = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise _data_error(f"image file {files[i]!r} could not be read ({type(e).__name__}: {e}); remove or "
                              "replace it.") from e
        return _center_crop_resize(img, min(img.shape[:2]), (size, size))

    return IndexedArray(lambda idx: to_unit_range(np.stack([load(int(i)) for i in idx])), len(files), (size, size, 3))


def image_array(arr: np.ndarray, path: str) -> IndexedArray:
    """Images from an array file: (N, H, W) or (N, H, W, C); uint8 is scaled to [-1, 1], floats are used
    as they are (give them in [-1, 1])."""
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.dtype == np.uint8:
        return in_memory(arr)
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise _data_error(f"data.path {path!r} contains NaN or infinite values; clean them before training.")
    return IndexedArray(lambda idx: arr[idx], len(arr), arr.shape[1:])


# ---------------------------------------------------------------------------------------------
# MNIST-based sets: StackedMNIST and the anomaly protocol
# ---------------------------------------------------------------------------------------------

def stacked_mnist(digits: IndexedArray, num_stacks: int, num_rows: int, seed: int) -> IndexedArray:
    """MEG Sec. 4.2 / the official data/mnist.py: a fixed random table of `num_rows` tuples of MNIST
    indices (drawn once from `seed`); row i is those digits as the channels of one 28x28 image, so the
    10^num_stacks digit combinations are the modes."""
    table = np.random.default_rng([seed, 3141, num_stacks]).integers(0, len(digits), size=(num_rows, num_stacks))

    def fetch(idx):
        picked = digits[table[idx].ravel()]                      # (n * S, 28, 28, 1)
        return picked.reshape(len(idx), num_stacks, 28, 28).transpose(0, 2, 3, 1)

    return IndexedArray(fetch, num_rows, (28, 28, num_stacks))


def mnist_anomaly_split(images: np.ndarray, labels: np.ndarray, digit: int, seed: int):
    """MEG Table 4 / Zenati et al. 2018: the normal classes (every digit but `digit`) are shuffled and
    split 80/20; training uses the 80%, the test set is the other 20% plus every image of `digit`.
    Returns (train images, test images, test labels with 1 = anomaly)."""
    normal = np.flatnonzero(labels != digit)
    normal = normal[np.random.default_rng([seed, 2718]).permutation(len(normal))]
    cut = int(len(normal) * 0.8)
    anomalous = np.flatnonzero(labels == digit)
    test_idx = np.concatenate([normal[cut:], anomalous])
    test_labels = np.concatenate([np.zeros(len(normal) - cut, np.int64), np.ones(len(anomalous), np.int64)])
    order = np.random.default_rng([seed, 2719]).permutation(len(test_idx))
    return images[normal[:cut]], images[test_idx[order]], test_labels[order]


# ---------------------------------------------------------------------------------------------
# KDD Cup 99
# ---------------------------------------------------------------------------------------------

KDD_FILES = ("kddcup.data_10_percent.gz", "kddcup.data_10_percent", "kddcup.data_10_percent_corrected.gz",
             "kddcup.data_10_percent_corrected")
KDD_SYMBOLIC = (1, 2, 3)          # protocol_type, service, flag
KDD_ANOMALY_LABEL = "normal."     # the minority class (about 20%) is the anomaly class in DAGMM / MEG
KDD_TEST_ANOMALY_FRACTION = 0.2


def read_kdd99(data_dir: str):
    """(features (N, 118) float64 with the 3 symbolic columns one-hot encoded, labels (N,) 1 = 'normal.')."""
    path = next((os.path.join(data_dir, f) for f in KDD_FILES if os.path.exists(os.path.join(data_dir, f))), None)
    if path is None:
        raise _data_error(f"data.data_dir {data_dir!r} has none of {list(KDD_FILES)}; it must hold the KDD Cup 99 "
                          "10 percent file (nothing is downloaded).")
    try:
        raw = gzip.open(path, "rt") if path.endswith(".gz") else open(path)
        with raw as f:
            rows = list(csv.reader(f))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise _data_error(f"KDD file {path!r} could not be read ({type(e).__name__}); replace it with the "
                          "original UCI file.") from e
    rows = [r for r in rows if r]
    if not rows or any(len(r) != 42 for r in rows[:1000]):
        raise _data_error(f"KDD file {path!r} does not have the 42 comma-separated columns of KDD Cup 99.")
    columns = list(zip(*rows))
    labels = np.asarray([lab == KDD_ANOMALY_LABEL for lab in columns[41]], np.int64)
    parts = []
    for j in range(41):
        if j in KDD_SYMBOLIC:
            values = sorted(set(columns[j]))
            lookup = {v: k for k, v in enumerate(values)}
            onehot = np.zeros((len(rows), len(values)))
            onehot[np.arange(len(rows)), [lookup[v] for v in columns[j]]] = 1.0
            parts.append(onehot)
        else:
            parts.append(np.asarray(columns[j], np.float64)[:, None])
    return np.concatenate(parts, axis=1), labels


def kdd99_split(features: np.ndarray, labels: np.ndarray, seed: int, scaling: str = "minmax"):
    """MEG's KDD protocol (official data/kdd.py): a random half of all rows is the training half, of
    which only the non-anomalous rows are trained on; the test set is the other half's non-anomalous
    rows plus enough of its anomalies to make them 20% of the test set. Features are min-max scaled
    with the training rows' range (the official code meant to: it calls MinMaxScaler.transform but
    drops the result, so its features stay unscaled: scaling='none' does the same). Returns (train, test,
    test labels)."""
    rng = np.random.default_rng([seed, 99])
    order = rng.permutation(len(features))
    half = len(features) // 2
    tr, te = order[:half], order[half:]
    train = features[tr][labels[tr] == 0]
    inliers, outliers = te[labels[te] == 0], te[labels[te] == 1]
    n_out = int(len(inliers) * KDD_TEST_ANOMALY_FRACTION / (1 - KDD_TEST_ANOMALY_FRACTION))
    outliers = rng.permutation(outliers)[:n_out]
    test_idx = rng.permutation(np.concatenate([inliers, outliers]))
    lo, hi = train.min(axis=0), train.max(axis=0)
    scale = np.where(hi > lo, hi - lo, 1.0)
    if scaling == "none":
        lo, scale = np.zeros_like(lo), np.ones_like(scale)
    prep = lambda x: ((x - lo) / scale).astype(np.float32)  # noqa: E731
    return prep(train), prep(features[test_idx]), labels[test_idx]
