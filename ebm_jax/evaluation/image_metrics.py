"""Metrics of image samples: StackedMNIST modes and KL, Fréchet distances, Inception score / FID.

  stacked_mnist_mode_ids(classify_fn, x)            (N,) mode ids in [0, 10^S) of (N, 28, 28, S) samples
  mode_coverage(ids, num_stacks, p_data=None)       modes covered and KL(p_model || p_data) of those ids
  feature_statistics(feature_fn, x, batch)          mean and covariance of features, in float64
  frechet_distance(mu1, sigma1, mu2, sigma2)        ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))
  inception_score(logits, splits=10)                exp(E_x KL(p(y|x) || p(y))): mean and std over splits
  load_feature_network(spec)                        a user's network x -> (logits, pool features) from 'module:function'
  evaluate_image_samples(samples, dataset, eval_config, generate, key)   the metrics that apply, for evaluation.model_eval.evaluate_model

Which metrics apply (evaluate_image_samples) follows the data shape and the config, never the method:
  * eval.classifier_path set, images (28, 28, 1): `{kind}/classifier_fd`, the Fréchet distance between
    the MNIST classifier's 256-d features of the samples and of the reference split;
  * eval.classifier_path set, images (28, 28, S) with S >= 2 (StackedMNIST): `{kind}/modes_covered`,
    `{kind}/num_modes` (10^S) and `{kind}/mode_kl`;
  * eval.inception_fn set, any images: `{kind}/inception_score`, `{kind}/inception_score_std`, `{kind}/fid`.
"""
import importlib
import importlib.util
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np

FID_REFERENCES = ("test", "train")


# ---------------------------------------------------------------------------------------------
# StackedMNIST: modes and KL (MEG Sec. 4.2 and Table 1; EBM-BB Table 1 follows the same procedure)
# ---------------------------------------------------------------------------------------------

def stacked_mnist_mode_ids(classify_fn: Callable, x, batch: int = 1000) -> np.ndarray:
    """(N,) mode ids of StackedMNIST samples x (N, 28, 28, S): channel s is classified on its own by
    `classify_fn` ((M, 28, 28, 1) -> (M, 10) logits or probabilities), giving digits d_0 .. d_{S-1}, and
    the id is sum_s d_s 10^(S-1-s) (channel 0 the most significant digit, as the reference code's
    counts[tuple(digits)] flattened in C order)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:3] != (28, 28):
        raise ValueError(f"StackedMNIST samples have shape {x.shape}; valid is (N, 28, 28, S), one MNIST digit "
                         "per channel.")
    n, s = x.shape[0], x.shape[3]
    # (N, 28, 28, S) -> (N * S, 28, 28, 1), sample-major, so that row i * S + c is channel c of sample i
    channels = np.transpose(x, (0, 3, 1, 2)).reshape(n * s, 28, 28, 1)
    digits = np.concatenate([np.argmax(np.asarray(classify_fn(channels[i:i + batch])), axis=-1)
                             for i in range(0, len(channels), batch)]).reshape(n, s)
    return (digits.astype(np.int64) * (10 ** np.arange(s - 1, -1, -1, dtype=np.int64))).sum(axis=1)


def mode_coverage(ids, num_stacks: int, p_data=None) -> Dict[str, float]:
    """Modes covered and KL(p_model || p_data) of mode ids in [0, 10^num_stacks).

    modes_covered counts the ids that occur at least once: MEG's text says only "the number of modes
    are counted using a pretrained MNIST classifier"; its official code (scripts/evals.py,
    ModeCollapseEval.count_modes) counts modes with counts > 0, which we follow.

    mode_kl = sum_m p_model(m) log(p_model(m) / p_data(m)) over modes with p_model(m) > 0, p_model the
    empirical frequencies of `ids`. The direction: MEG's text says the KL is "calculated empirically
    between the generated mode distribution and the data distribution" (Table 1: "between the training
    and samples distributions") without an explicit order; its official code computes KLD(p_model,
    p_data) with p_data uniform over 10^S modes and prints it as 'Reverse KL', i.e. KL(p_model ||
    p_data). EBM-BB follows Kumar et al.'s procedure, so both tables are KL(p_model || p_data).

    p_data: None for the uniform distribution over the 10^num_stacks modes (the tables' reference; the
    StackedMNIST data are sampled with uniform digits), or a length-10^num_stacks histogram (counts or
    probabilities; e.g. the training set's mode counts). KL is infinite when the samples hit a mode
    that p_data gives probability 0.
    """
    num_modes = 10 ** int(num_stacks)
    ids = np.asarray(ids, np.int64).ravel()
    if ids.size == 0:
        raise ValueError("mode_coverage needs at least one sample.")
    if ids.min() < 0 or ids.max() >= num_modes:
        raise ValueError(f"mode ids must lie in [0, {num_modes}) for {num_stacks} stacks; got ids in "
                         f"[{ids.min()}, {ids.max()}].")
    counts = np.bincount(ids, minlength=num_modes).astype(np.float64)
    p_model = counts / counts.sum()
    hit = counts > 0
    if p_data is None:
        log_q = np.full(int(hit.sum()), -np.log(num_modes))
    else:
        q = np.asarray(p_data, np.float64).ravel()
        if q.shape != (num_modes,) or np.any(q < 0) or not np.isfinite(q).all() or q.sum() <= 0:
            raise ValueError(f"p_data must be a non-negative histogram of length {num_modes} (10^{num_stacks}) "
                             f"with a positive sum; got shape {np.shape(p_data)}.")
        q = q / q.sum()
        if np.any(q[hit] == 0):
            kl = float("inf")
            return {"modes_covered": int(hit.sum()), "num_modes": num_modes, "mode_kl": kl}
        log_q = np.log(q[hit])
    kl = float(np.sum(p_model[hit] * (np.log(p_model[hit]) - log_q)))
    return {"modes_covered": int(hit.sum()), "num_modes": num_modes, "mode_kl": kl}


# ---------------------------------------------------------------------------------------------
# Fréchet distance between Gaussians fitted to features (FID, Heusel et al. 2017)
# ---------------------------------------------------------------------------------------------

def feature_statistics(feature_fn: Callable, x, batch: int = 500) -> Tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) (ddof=1, as numpy.cov and pytorch-fid) of feature_fn
    over x, in float64, accumulated batch by batch so that only D x D numbers are held.

    The sums are taken around the first batch's mean: the plain one-pass formula E[ff^T] - mu mu^T
    cancels catastrophically when the features' mean is large against their spread."""
    x_len = len(x)
    if x_len < 2:
        raise ValueError(f"feature_statistics needs at least 2 examples to estimate a covariance; got {x_len}.")
    shift = s1 = s2 = None
    n = 0
    for i in range(0, x_len, int(batch)):
        f = np.asarray(feature_fn(x[i:i + batch]), np.float64)
        if f.ndim != 2 or f.shape[0] != len(x[i:i + batch]):
            raise ValueError(f"the feature function returned shape {f.shape} for {len(x[i:i + batch])} inputs; "
                             "valid is (batch, D).")
        if shift is None:
            shift = f.mean(axis=0)
            s1, s2 = np.zeros_like(shift), np.zeros((f.shape[1], f.shape[1]))
        d = f - shift
        s1 += d.sum(axis=0)
        s2 += d.T @ d
        n += len(f)
    mean_d = s1 / n
    sigma = (s2 - n * np.outer(mean_d, mean_d)) / (n - 1)
    return shift + mean_d, 0.5 * (sigma + sigma.T)


def _sqrt_psd(a):
    """Symmetric square root of a PSD matrix; eigenvalues within eigh's round-off of 0 (|w| <= D eps
    max w) are set to 0, as their square roots (~1e-8 sqrt(max w)) would be pure noise."""
    w, v = np.linalg.eigh(a)
    tol = len(w) * np.finfo(np.float64).eps * max(float(w.max()), 0.0)
    return (v * np.sqrt(np.where(w > tol, w, 0.0))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)).

    Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)) (similar matrices), and S1^(1/2) S2 S1^(1/2) =
    A^T A with A = S2^(1/2) S1^(1/2), so the trace is the sum of the singular values of A. This needs
    no complex sqrtm of the non-symmetric product (pytorch-fid's way, which adds eps I when it fails),
    and, unlike square roots of the eigenvalues of A^T A, it does not magnify round-off: with singular
    covariances (fewer samples than features) a set's distance to itself is 0 to ~1e-13 relative,
    where eigenvalue square roots give errors of ~1e-8 per null direction."""
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} has shape {s.shape}; with means of length {d} valid is ({d}, {d}).")
    if mu2.shape != (d,):
        raise ValueError(f"mu1 has length {d} and mu2 length {mu2.shape[0]}; the two feature sets must have the "
                         "same dimension.")
    sigma1, sigma2 = 0.5 * (sigma1 + sigma1.T), 0.5 * (sigma2 + sigma2.T)
    tr_covmean = float(np.sum(np.linalg.svd(_sqrt_psd(sigma2) @ _sqrt_psd(sigma1), compute_uv=False)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance_of(feature_fn: Callable, x, reference_stats, batch: int = 500) -> float:
    """Fréchet distance between feature_fn's statistics on x and `reference_stats` = (mu, sigma)."""
    mu, sigma = feature_statistics(feature_fn, x, batch)
    return frechet_distance(mu, sigma, *reference_stats)


# ---------------------------------------------------------------------------------------------
# Inception score (Salimans et al. 2016) for any classifier's logits
# ---------------------------------------------------------------------------------------------

def _log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.sum(np.exp(logits - m), axis=-1, keepdims=True))


def inception_score(logits, splits: int = 10) -> Tuple[float, float]:
    """Mean and standard deviation over `splits` consecutive equal parts of exp(mean_x KL(p(y|x) || p(y))),
    p(y|x) = softmax(logits) and p(y) its mean over the part (the split protocol of the original code,
    which MEG's Table 2 reports as mean +- std). Rows beyond a multiple of `splits` are dropped."""
    log_p = _log_softmax(logits)
    if log_p.ndim != 2:
        raise ValueError(f"logits have shape {np.shape(logits)}; valid is (N, num_classes).")
    n = (len(log_p) // int(splits)) * int(splits)
    if int(splits) < 1 or n == 0:
        raise ValueError(f"inception_score got {len(log_p)} samples for {splits} splits; give at least one "
                         "sample per split.")
    scores = []
    for part in np.split(log_p[:n], int(splits)):
        p = np.exp(part)
        log_py = np.log(np.mean(p, axis=0))
        scores.append(np.exp(np.mean(np.sum(p * (part - log_py), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------------------------
# A user's Inception (or any) network: 'module:function' or 'path/to/file.py:function'
# ---------------------------------------------------------------------------------------------

def resolve_spec(spec: str, field: str = "config.eval.inception_fn") -> Callable:
    """The attribute named by 'package.module:function' or 'path/to/file.py:function' (not called)."""
    spec = str(spec)
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"{field}={spec!r} is invalid; valid is 'package.module:function' or "
                         "'path/to/file.py:function', naming a function that returns the network.")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise FileNotFoundError(f"no such file {target!r}")
            module_spec = importlib.util.spec_from_file_location(f"_ebm_feature_net_{abs(hash(target))}", target)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as e:
        raise ValueError(f"{field}={spec!r}: {target!r} could not be imported ({type(e).__name__}: {e}).") from e
    if not callable(getattr(module, attr, None)):
        raise ValueError(f"{field}={spec!r}: {target!r} has no function {attr!r}.")
    return getattr(module, attr)


def load_feature_network(spec: str, field: str = "config.eval.inception_fn") -> Callable:
    """Calls the factory named by `spec` once with no arguments; it must return a function mapping images
    (N, H, W, C) in [-1, 1] (the library's scale, at the data's own size) to (logits (N, K), pool
    features (N, D)). Resizing to 299x299, replicating grey channels and the network's own input
    scaling are the function's job, as they differ between Inception ports."""
    factory = resolve_spec(spec, field)
    net = factory()
    if not callable(net):
        raise ValueError(f"{field}={spec!r} returned {type(net).__name__}; valid is a function x -> (logits, features).")
    return net


def _checked_network(net: Callable, spec: str, field: str):
    """net with its outputs checked on every call: a pair of 2-D arrays with one row per image."""
    def call(x):
        out = net(x)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"{field}={spec!r} returned {type(out).__name__}; valid is a pair (logits (N, K), "
                             "features (N, D)).")
        logits, feats = np.asarray(out[0]), np.asarray(out[1])
        if logits.ndim != 2 or feats.ndim != 2 or len(logits) != len(x) or len(feats) != len(x):
            raise ValueError(f"{field}={spec!r} returned logits of shape {logits.shape} and features of shape "
                             f"{feats.shape} for {len(x)} images; valid is (N, K) and (N, D) with N = {len(x)}.")
        return logits, feats
    return call


def network_metrics(net: Callable, x, reference_stats, splits: int = 10, batch: int = 250) -> Dict[str, float]:
    """Inception score (mean, std over splits) and FID of images x with a network x -> (logits, features)
    against reference feature statistics (mu, sigma)."""
    logits, feats = [], []
    for i in range(0, len(x), batch):
        lo, fe = net(x[i:i + batch])
        logits.append(np.asarray(lo, np.float64))
        feats.append(np.asarray(fe, np.float64))
    logits, feats = np.concatenate(logits), np.concatenate(feats)
    is_mean, is_std = inception_score(logits, splits=min(int(splits), len(logits)))
    mu, sigma = feature_statistics(lambda f: f, feats, batch=len(feats))
    return {"inception_score": is_mean, "inception_score_std": is_std,
            "fid": frechet_distance(mu, sigma, *reference_stats)}


# ---------------------------------------------------------------------------------------------
# What evaluation.model_eval.evaluate_model calls
# ---------------------------------------------------------------------------------------------

def check_eval_config(eval_config, ConfigError=ValueError) -> None:
    """Fails before training when an image-metric field of config.eval is unusable (a missing or
    malformed classifier file, an unimportable network spec, a bad sample count)."""
    n = eval_config.get("num_metric_samples", 10_000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"config.eval.num_metric_samples={n!r} is invalid; it must be an integer >= 2.")
    ref = eval_config.get("fid_reference", "test")
    if ref not in FID_REFERENCES:
        raise ConfigError(f"config.eval.fid_reference={ref!r} is invalid; valid values are {list(FID_REFERENCES)}.")
    path = eval_config.get("classifier_path", "")
    if path:
        from ebm_jax.evaluation.classifier import load_classifier
        try:
            load_classifier(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"config.eval.classifier_path: {e}") from e
    spec = eval_config.get("inception_fn", "")
    if spec:
        try:
            resolve_spec(spec)
        except ValueError as e:
            raise ConfigError(str(e)) from e


def _metric_samples(samples, kind, n, generate, key):
    """The first n samples of `kind`; generator samples are topped up to n with `generate(key, m)`."""
    x = np.asarray(samples[kind])
    if kind == "generator" and generate is not None and len(x) < n:
        import jax
        # `generate` is compiled by the caller with the parameters as an argument; a fixed chunk size
        # keeps it to one program for every chunk
        extra, chunk, i = [], min(n, 1000), 0
        while len(x) + sum(map(len, extra)) < n:
            extra.append(np.asarray(generate(jax.random.fold_in(key, i), chunk)))
            i += 1
        x = np.concatenate([x] + extra)
    return x[:n]


def evaluate_image_samples(samples: Dict[str, np.ndarray], dataset, eval_config,
                           generate: Optional[Callable] = None, key=None) -> Dict[str, float]:
    """Image metrics of every kind of samples ('generator', 'mcmc', 'reconstruction'; 'test', the held-
    out images themselves, is skipped), for the fields set in eval_config (see the module docstring).

    Each kind uses its first eval.num_metric_samples samples; generator samples are topped up to that
    number with `generate(key, m)` (cheap: one forward pass), MCMC samples are not (a chain per sample
    is costly), so MCMC metrics use min(num_metric_samples, eval.num_samples) samples. The number used
    is reported as `{kind}/num_metric_samples`, as Fréchet distances are biased upwards at small n.
    The reference statistics are those of the dataset's `eval.fid_reference` split ('test' default)."""
    from ebm_jax.errors import ConfigError
    shape = tuple(dataset.shape)
    classifier_path = eval_config.get("classifier_path", "")
    spec = eval_config.get("inception_fn", "")
    if len(shape) != 3 or not (classifier_path or spec):
        return {}
    check_eval_config(eval_config, ConfigError)
    n = int(eval_config.get("num_metric_samples", 10_000))
    reference = dataset.train if eval_config.get("fid_reference", "test") == "train" else dataset.test
    kinds = [k for k in samples if k != "test"]
    if key is None:
        import jax
        key = jax.random.PRNGKey(0)
    xs = {k: _metric_samples(samples, k, n, generate, key) for k in kinds}
    metrics: Dict[str, float] = {}
    if classifier_path and shape[:2] == (28, 28):
        from ebm_jax.evaluation import classifier
        params = classifier.load_classifier(classifier_path)
        if shape[2] == 1:
            feats = lambda b: classifier.classifier_features(params, b)  # noqa: E731
            ref_stats = feature_statistics(feats, reference)
            for k, x in xs.items():
                metrics[f"{k}/classifier_fd"] = frechet_distance_of(feats, x, ref_stats)
        else:
            classify = lambda b: classifier.classifier_logits(params, b)  # noqa: E731
            for k, x in xs.items():
                for name, v in mode_coverage(stacked_mnist_mode_ids(classify, x), shape[2]).items():
                    metrics[f"{k}/{name}"] = v
    if spec:
        net = _checked_network(load_feature_network(spec), spec, "config.eval.inception_fn")
        ref_stats = feature_statistics(lambda b: net(b)[1], reference, batch=250)
        for k, x in xs.items():
            for name, v in network_metrics(net, x, ref_stats).items():
                metrics[f"{k}/{name}"] = v
    if metrics:
        for k, x in xs.items():
            metrics[f"{k}/num_metric_samples"] = int(len(x))
    return metrics
