"""A small MNIST classifier for the image metrics (StackedMNIST modes, Fréchet distance in its features).

The network is the one whose PyTorch weights ship in the PyPI wheel digit-recognizer-py 0.1.0 (MIT;
99.06% MNIST test accuracy): three blocks of [3x3 convolution with padding 1 + bias, ReLU, 2x2 max
pool] with 32, 64 and 128 channels (28 -> 14 -> 7 -> 3), flattened in PyTorch's (C, H, W) order to
1152, a 1152 -> 256 dense layer + ReLU (the 256-d feature layer) and a 256 -> 10 dense layer (logits).

Weights are stored as an .npz in the PyTorch layout of that wheel, so that the published file and the
output of `python -m ebm_jax.evaluation.train_classifier` are read by the same `load_classifier`:

    conv_layers_{0,3,6}_weight (out, in, 3, 3)   conv_layers_{0,3,6}_bias (out,)
    fc_layers_0_weight (256, 1152)               fc_layers_0_bias (256,)
    fc_layers_2_weight (10, 256)                 fc_layers_2_bias (10,)

    params = load_classifier("digit_recognizer_py_0.1.0_mnist_cnn.npz")
    logits = classifier_logits(params, x)       # x: (N, 28, 28, 1) in [-1, 1], the library's image scale
    feats = classifier_features(params, x)      # (N, 256), after the ReLU
"""
import os
from typing import Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CHANNELS = (32, 64, 128)
FEATURES = 256
NUM_CLASSES = 10
# The classifier was trained on torchvision's ToTensor() / Normalize((0.1307,), (0.3081,)) inputs.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# npz key prefix (PyTorch nn.Sequential index) -> Flax layer name
_CONV_KEYS = ("conv_layers_0", "conv_layers_3", "conv_layers_6")
_DENSE_KEYS = ("fc_layers_0", "fc_layers_2")
_LAYERS = dict(zip(_CONV_KEYS + _DENSE_KEYS, ("conv0", "conv1", "conv2", "fc0", "fc1")))


def _expected_shapes() -> Dict[str, tuple]:
    shapes, cin = {}, 1
    for key, cout in zip(_CONV_KEYS, CHANNELS):
        shapes[f"{key}_weight"], shapes[f"{key}_bias"] = (cout, cin, 3, 3), (cout,)
        cin = cout
    shapes["fc_layers_0_weight"], shapes["fc_layers_0_bias"] = (FEATURES, CHANNELS[-1] * 3 * 3), (FEATURES,)
    shapes["fc_layers_2_weight"], shapes["fc_layers_2_bias"] = (NUM_CLASSES, FEATURES), (NUM_CLASSES,)
    return shapes


EXPECTED_SHAPES = _expected_shapes()


class MnistClassifier(nn.Module):
    """The classifier on normalised inputs (N, 28, 28, 1) = (x_uint8 / 255 - 0.1307) / 0.3081."""

    @nn.compact
    def __call__(self, x, return_features: bool = False):
        for i, c in enumerate(CHANNELS):
            x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{i}")(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="VALID")  # floors 7 -> 3, as PyTorch
        # PyTorch flattens (C, H, W); flattening NHWC directly would scramble the first dense layer's inputs.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        h = nn.relu(nn.Dense(FEATURES, name="fc0")(x))
        if return_features:
            return h
        return nn.Dense(NUM_CLASSES, name="fc1")(h)


def params_from_torch_layout(arrays) -> Dict:
    """Flax params from the PyTorch-layout arrays (OIHW kernels -> HWIO, (out, in) matrices -> (in, out))."""
    p = {}
    for key, name in _LAYERS.items():
        w = np.asarray(arrays[f"{key}_weight"], np.float32)
        p[name] = {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T),
                   "bias": jnp.asarray(np.asarray(arrays[f"{key}_bias"], np.float32))}
    return {"params": p}


def params_to_torch_layout(params) -> Dict[str, np.ndarray]:
    """The inverse of params_from_torch_layout: the arrays `save_classifier` writes."""
    out = {}
    for key, name in _LAYERS.items():
        w = np.asarray(params["params"][name]["kernel"], np.float32)
        out[f"{key}_weight"] = w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T
        out[f"{key}_bias"] = np.asarray(params["params"][name]["bias"], np.float32)
    return out


def load_classifier(path: str) -> Dict:
    """Flax params of the classifier stored at `path` (an .npz in the PyTorch layout above).

    Raises FileNotFoundError for a missing file and ValueError for a file that is not such an npz."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"classifier weights {path!r} do not exist; give the .npz of digit-recognizer-py 0.1.0 or one written by "
            "`python -m ebm_jax.evaluation.train_classifier --data_dir MNIST_DIR --out FILE.npz`.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.keys()}
    except Exception as e:  # not a zip, truncated, pickled objects, ...
        raise ValueError(f"classifier weights {path!r} could not be read as an .npz ({type(e).__name__}: {e}).") from e
    missing = sorted(set(EXPECTED_SHAPES) - set(arrays))
    if missing:
        raise ValueError(f"classifier weights {path!r} lack the arrays {missing}; valid files hold exactly "
                         f"{sorted(EXPECTED_SHAPES)} (the PyTorch layout of the 32-64-128 MNIST CNN).")
    for key, shape in EXPECTED_SHAPES.items():
        if tuple(arrays[key].shape) != shape:
            raise ValueError(f"classifier weights {path!r} hold {key} of shape {tuple(arrays[key].shape)}; valid is "
                             f"{shape} (the PyTorch layout of the 32-64-128 MNIST CNN).")
        if not np.all(np.isfinite(arrays[key])):
            raise ValueError(f"classifier weights {path!r} hold NaN or infinite values in {key}; retrain or re-copy it.")
    return params_from_torch_layout(arrays)


def save_classifier(params, path: str) -> None:
    """Writes params in the npz layout `load_classifier` reads, via a temporary name and a rename."""
    import io
    from ebm_jax.evaluation.toy2d import write_atomic
    buf = io.BytesIO()
    np.savez(buf, **params_to_torch_layout(params))
    write_atomic(str(path), buf.getvalue())


def normalise(x):
    """Library images in [-1, 1] to the classifier's inputs: (x_uint8 / 255 - mean) / std with
    x_uint8 / 255 = (x + 1) / 2."""
    return ((x + 1.0) * 0.5 - MNIST_MEAN) / MNIST_STD


def check_images(x, name: str = "x"):
    shape = tuple(np.shape(x))
    if len(shape) != 4 or shape[1:] != (28, 28, 1):
        raise ValueError(f"{name} has shape {shape}; the MNIST classifier takes images of shape (N, 28, 28, 1) "
                         "in [-1, 1].")


@jax.jit
def _logits(params, x):
    return MnistClassifier().apply(params, normalise(x))


@jax.jit
def _features(params, x):
    return MnistClassifier().apply(params, normalise(x), return_features=True)


def classifier_logits(params, x):
    """(N, 10) logits of images x (N, 28, 28, 1) in [-1, 1]."""
    check_images(x)
    return _logits(params, jnp.asarray(x, jnp.float32))


def classifier_features(params, x):
    """(N, 256) feature-layer activations (after the ReLU) of images x (N, 28, 28, 1) in [-1, 1]."""
    check_images(x)
    return _features(params, jnp.asarray(x, jnp.float32))


def batched(fn, x, batch: int = 1000) -> np.ndarray:
    """fn over x in chunks of `batch` rows, concatenated as numpy (bounded memory, one compile per chunk size)."""
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def accuracy(params, images, labels, batch: int = 1000) -> float:
    """Fraction of images whose arg-max logit equals the label."""
    pred = np.argmax(batched(lambda b: classifier_logits(params, b), images, batch), axis=1)
    return float(np.mean(pred == np.asarray(labels).ravel()))


def load_labels(data_dir: str, split: str, field: str = "data.data_dir") -> np.ndarray:
    """The labels of one split ('train' or 'test') of an MNIST-format folder as int32 (N,); a missing or
    malformed file is a DataError naming it."""
    from ebm_jax.data.images import read_idx_split
    return read_idx_split(data_dir, split, field, labels=True).astype(np.int32)


__all__: Sequence[str] = ("MnistClassifier", "load_classifier", "save_classifier", "classifier_logits",
                          "classifier_features", "accuracy", "load_labels", "params_from_torch_layout",
                          "params_to_torch_layout", "EXPECTED_SHAPES")
