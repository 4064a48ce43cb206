"""Image metrics: StackedMNIST modes and KL, Fréchet distance, Inception score / FID, and their wiring
into evaluation.model_eval.evaluate_model. Each is checked against an explicit computation or a hand-checkable case."""
import json
import math
import textwrap

import jax
import numpy as np
import pytest
import scipy.linalg

from ebm_jax import train
from ebm_jax.evaluation import model_eval
from ebm_jax.state import init_full_state
from ebm_jax.data import Dataset
from ebm_jax.errors import ConfigError
from ebm_jax.evaluation import classifier, image_metrics as im


# ---------------------------------------------------------------- StackedMNIST modes and KL

def constant_channel_images(digits):
    """(N, 28, 28, S) images whose channel s is the constant digits[:, s] / 10 - 0.5, for fake_classify."""
    d = np.asarray(digits, np.float32)
    return np.broadcast_to((d / 10.0 - 0.5)[:, None, None, :], (len(d), 28, 28, d.shape[1])).copy()


def fake_classify(x):
    """A stand-in classifier reading the digit off the pixel value: one-hot logits (N, 10)."""
    assert x.shape[1:] == (28, 28, 1)
    digit = np.rint((x[:, 0, 0, 0] + 0.5) * 10).astype(int)
    return np.eye(10)[digit] * 5.0


def explicit_mode_metrics(digits, p_data=None):
    """Counts with a dict of digit tuples and KL(p_model || p_data) as a plain sum over the tuples."""
    s = len(digits[0])
    counts = {}
    for row in digits:
        counts[tuple(int(v) for v in row)] = counts.get(tuple(int(v) for v in row), 0) + 1
    n = len(digits)
    kl = 0.0
    for mode, c in counts.items():
        q = 1.0 / 10 ** s if p_data is None else p_data[int("".join(map(str, mode)))] / np.sum(p_data)
        kl += (c / n) * math.log((c / n) / q)
    return len(counts), kl


@pytest.mark.parametrize("stacks", [3, 4])
def test_stacked_modes_and_kl_match_an_explicit_count(stacks):
    rng = np.random.default_rng(stacks)
    # a skewed, incomplete mode distribution: digits 0-5 only, with a bias towards small ones
    digits = np.minimum(rng.geometric(0.4, size=(700, stacks)) - 1, 5)
    ids = im.stacked_mnist_mode_ids(fake_classify, constant_channel_images(digits), batch=128)
    np.testing.assert_array_equal(ids, [int("".join(map(str, row))) for row in digits])
    got = im.mode_coverage(ids, stacks)
    modes, kl = explicit_mode_metrics(digits)
    assert got["modes_covered"] == modes and got["num_modes"] == 10 ** stacks
    assert got["mode_kl"] == pytest.approx(kl, rel=1e-12)
    # against an empirical data histogram instead of the uniform one
    p_data = rng.uniform(0.5, 2.0, size=10 ** stacks)
    assert im.mode_coverage(ids, stacks, p_data)["mode_kl"] == pytest.approx(explicit_mode_metrics(digits, p_data)[1],
                                                                              rel=1e-12)


def test_mode_coverage_hand_checkable_cases():
    # every one of the 1000 modes exactly twice: all covered, p_model = p_data, KL 0
    ids = np.repeat(np.arange(1000), 2)
    assert im.mode_coverage(ids, 3) == {"modes_covered": 1000, "num_modes": 1000, "mode_kl": 0.0}
    # total collapse onto one mode: KL(p_model || uniform) = log 1000
    got = im.mode_coverage(np.full(50, 123), 3)
    assert got["modes_covered"] == 1 and got["mode_kl"] == pytest.approx(math.log(1000))
    # half on each of two modes: log 1000 - log 2
    assert im.mode_coverage([7, 9] * 10, 3)["mode_kl"] == pytest.approx(math.log(500))
    # a mode that the data histogram never shows: the KL is infinite
    p = np.ones(100)
    p[42] = 0
    assert im.mode_coverage([42, 1], 2, p)["mode_kl"] == float("inf")
    with pytest.raises(ValueError, match=r"mode ids must lie in \[0, 1000\)"):
        im.mode_coverage([1000], 3)
    with pytest.raises(ValueError, match="length 1000"):
        im.mode_coverage([1], 3, np.ones(10))
    with pytest.raises(ValueError, match=r"\(N, 28, 28, S\)"):
        im.stacked_mnist_mode_ids(fake_classify, np.zeros((2, 32, 32, 3)))


# ---------------------------------------------------------------- Fréchet distance

def scipy_frechet(mu1, s1, mu2, s2):
    """The usual formula with scipy's general matrix square root of the product (pytorch-fid's way)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


def random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    # commuting covariances: sum (sqrt a - sqrt b)^2 + ||mu1 - mu2||^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert im.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert im.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_distance_matches_scipy_sqrtm_on_random_spd():
    rng = np.random.default_rng(1)
    for d in (3, 20, 64):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d)
        assert im.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-8)
        assert im.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # rank-deficient covariances (fewer samples than features), where sqrtm is at its least stable
    s1, s2 = random_spd(rng, 30, rank=10), random_spd(rng, 30, rank=12)
    mu = rng.normal(size=30)
    assert im.frechet_distance(mu, s1, mu, s2) == pytest.approx(scipy_frechet(mu, s1, mu, s2), rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match=r"sigma2 has shape \(3, 3\); with means of length 4 valid is \(4, 4\)"):
        im.frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.eye(3))


def test_feature_statistics_match_numpy_on_the_whole_array():
    rng = np.random.default_rng(2)
    # a large common offset: the plain one-pass E[ff^T] - mu mu^T would lose most digits here
    x = 1e4 + rng.normal(size=(103, 5)) @ rng.normal(size=(5, 5))
    w = rng.normal(size=(5, 7))
    fn = lambda b: b @ w  # noqa: E731
    mu, sigma = im.feature_statistics(fn, x, batch=10)
    f = x @ w
    np.testing.assert_allclose(mu, f.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-7, atol=1e-9)
    # the Fréchet distance of a set with itself is 0
    assert im.frechet_distance_of(fn, x, (mu, sigma)) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- Inception score

def explicit_inception_score(logits, splits):
    scores = []
    for part in np.array_split(np.asarray(logits, np.float64), splits):
        p = np.exp(part) / np.exp(part).sum(axis=1, keepdims=True)
        py = p.mean(axis=0)
        kl = [sum(pi[j] * math.log(pi[j] / py[j]) for j in range(len(py))) for pi in p]
        scores.append(math.exp(sum(kl) / len(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_hand_checkable_and_explicit():
    k = 7
    certain_uniform = np.tile(np.eye(k) * 60.0, (10, 1))  # confident, every class equally often in each split
    mean, std = im.inception_score(certain_uniform, splits=5)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-8)
    constant = np.tile(np.random.default_rng(0).normal(size=k), (40, 1))  # the same p(y|x) for every x
    assert im.inception_score(constant, splits=4)[0] == pytest.approx(1.0, abs=1e-12)
    logits = np.random.default_rng(1).normal(size=(60, 5)) * 2
    assert im.inception_score(logits, splits=3) == pytest.approx(explicit_inception_score(logits, 3), rel=1e-10)
    with pytest.raises(ValueError, match="at least one sample per split"):
        im.inception_score(logits[:2], splits=3)


# ---------------------------------------------------------------- a user's network through 'file.py:function'

STANDIN = """
import numpy as np

def make_net():
    # a stand-in for Inception: logits from the mean of each image's quadrants, features = the quadrant means
    def net(x):
        x = np.asarray(x)
        q = np.stack([x[:, :14, :14].mean(axis=(1, 2, 3)), x[:, :14, 14:].mean(axis=(1, 2, 3)),
                      x[:, 14:, :14].mean(axis=(1, 2, 3)), x[:, 14:, 14:].mean(axis=(1, 2, 3))], axis=1)
        return 3.0 * q, q
    return net

def not_a_pair():
    return lambda x: np.zeros((len(x), 3))
"""


@pytest.fixture
def standin(tmp_path):
    path = tmp_path / "standin_net.py"
    path.write_text(textwrap.dedent(STANDIN))
    return str(path)


def test_network_metrics_through_a_spec(standin):
    net = im.load_feature_network(f"{standin}:make_net")
    rng = np.random.default_rng(3)
    x, ref = rng.uniform(-1, 1, size=(40, 28, 28, 1)), rng.uniform(-1, 1, size=(50, 28, 28, 1))
    ref_stats = im.feature_statistics(lambda b: net(b)[1], ref, batch=16)
    got = im.network_metrics(net, x, ref_stats, splits=4, batch=16)
    logits, feats = net(x)
    assert got["inception_score"] == pytest.approx(explicit_inception_score(logits, 4)[0], rel=1e-10)
    r = net(ref)[1]
    assert got["fid"] == pytest.approx(scipy_frechet(feats.mean(0), np.cov(feats, rowvar=False), r.mean(0),
                                                     np.cov(r, rowvar=False)), rel=1e-6)
    # identical sets: FID 0
    assert im.network_metrics(net, ref, ref_stats, splits=5)["fid"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="valid is 'package.module:function'"):
        im.load_feature_network("no_colon_here")
    with pytest.raises(ValueError, match="could not be imported"):
        im.load_feature_network("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no function 'missing'"):
        im.load_feature_network(f"{standin}:missing")
    bad = im._checked_network(im.load_feature_network(f"{standin}:not_a_pair"), "s", "eval.inception_fn")
    with pytest.raises(ValueError, match=r"valid is a pair \(logits \(N, K\), features \(N, D\)\)"):
        bad(x)


# ---------------------------------------------------------------- wiring into evaluate_model

def eval_config(**extra):
    from conftest import tiny_config
    config = tiny_config()
    config.eval.mcmc = False
    for k, v in extra.items():
        config.eval[k] = v
    return config


def init_params(config, shape):
    from ebm_jax.methods import get_method
    method = get_method(config, shape)
    return method, method.inference_params(init_full_state(method, jax.random.PRNGKey(0)))


@pytest.fixture(scope="module")
def random_classifier(tmp_path_factory):
    from test_classifier import random_torch_weights
    path = str(tmp_path_factory.mktemp("clf") / "w.npz")
    np.savez(path, **random_torch_weights(3))
    return path


def test_evaluate_model_adds_classifier_fd_for_mnist_shaped_data(random_classifier):
    rng = np.random.default_rng(4)
    data = Dataset("fake_mnist", train=rng.uniform(-1, 1, (64, 28, 28, 1)).astype(np.float32),
                   test=rng.uniform(-1, 1, (60, 28, 28, 1)).astype(np.float32), seed=0)
    # 48 metric samples from 32 drawn for the picture: the generator is asked for the rest
    config = eval_config(classifier_path=random_classifier, num_metric_samples=48, num_samples=32)
    method, params = init_params(config, data.shape)
    metrics, png, samples = model_eval.evaluate_model(method, params, data, config, jax.random.PRNGKey(1))
    assert png is not None and samples["generator"].shape == (32, 28, 28, 1)
    assert metrics["generator/num_metric_samples"] == 48
    cp = classifier.load_classifier(random_classifier)
    feats = lambda b: np.asarray(classifier.classifier_features(cp, b))  # noqa: E731
    ref = feats(data.test)
    got = metrics["generator/classifier_fd"]
    # the first 32 of the 48 samples are the picture's; the rest come from fresh generator draws
    x48 = im._metric_samples(samples, "generator", 48, lambda k, m: method.sample(params, k, m)[0],
                             jax.random.fold_in(jax.random.PRNGKey(1), 11))
    np.testing.assert_array_equal(x48[:32], samples["generator"])
    f = feats(x48)
    # 48 and 60 points in 256 dimensions: singular covariances, where scipy's sqrtm is unreliable; the
    # Fréchet formula itself is checked against it above, here what goes in is checked
    expected = im.frechet_distance(f.mean(0), np.cov(f, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False))
    assert got == pytest.approx(expected, rel=1e-6)
    # the test set against itself (the 'fid_reference') is at distance 0
    assert im.frechet_distance_of(feats, data.test, im.feature_statistics(feats, data.test)) == pytest.approx(0, abs=1e-6)


def test_evaluate_model_adds_modes_for_stacked_data_and_inception_metrics(random_classifier, standin):
    rng = np.random.default_rng(5)
    data = Dataset("fake_stacked", train=rng.uniform(-1, 1, (64, 28, 28, 3)).astype(np.float32),
                   test=rng.uniform(-1, 1, (40, 28, 28, 3)).astype(np.float32), seed=0)
    config = eval_config(classifier_path=random_classifier, inception_fn=f"{standin}:make_net",
                         num_metric_samples=30, num_samples=30)
    method, params = init_params(config, data.shape)
    metrics, _, samples = model_eval.evaluate_model(method, params, data, config, jax.random.PRNGKey(2))
    x = samples["generator"]
    cp = classifier.load_classifier(random_classifier)
    digits = np.stack([np.argmax(np.asarray(classifier.classifier_logits(cp, x[..., s:s + 1])), axis=1)
                       for s in range(3)], axis=1)
    modes, kl = explicit_mode_metrics(digits)
    assert metrics["generator/modes_covered"] == modes and metrics["generator/num_modes"] == 1000
    assert metrics["generator/mode_kl"] == pytest.approx(kl, rel=1e-9)
    assert "generator/classifier_fd" not in metrics  # a 3-channel image is not an MNIST digit
    net = im.load_feature_network(f"{standin}:make_net")
    logits, feats = net(x)
    ref = net(data.test)[1]
    assert metrics["generator/inception_score"] == pytest.approx(explicit_inception_score(logits, 10)[0], rel=1e-9)
    assert metrics["generator/fid"] == pytest.approx(
        scipy_frechet(feats.mean(0), np.cov(feats, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False)), rel=1e-6)
    json.dumps(metrics)  # eval_final.json must be able to hold them


def test_unusable_image_metric_fields_stop_before_training(tmp_path, random_classifier):
    from ebm_jax import configlib
    with pytest.raises(ConfigError, match="config.eval.classifier_path:.*missing.npz.*do not exist"):
        configlib.validate(eval_config(classifier_path=str(tmp_path / "missing.npz")))
    with pytest.raises(ConfigError, match="eval.inception_fn='nocolon' is invalid"):
        configlib.validate(eval_config(inception_fn="nocolon"))
    with pytest.raises(ConfigError, match="num_metric_samples=1 is invalid"):
        configlib.validate(eval_config(num_metric_samples=1))
    with pytest.raises(ConfigError, match="fid_reference='val' is invalid; valid values are \\['test', 'train'\\]"):
        configlib.validate(eval_config(fid_reference="val"))
    configlib.validate(eval_config(classifier_path=random_classifier))  # a good file passes
    # 2-D data: the fields apply to images only, so nothing is added
    config = eval_config(classifier_path=random_classifier)
    data = Dataset("toy", train=np.zeros((10, 2), np.float32), test=np.zeros((10, 2), np.float32), seed=0)
    assert im.evaluate_image_samples({"generator": np.zeros((5, 2))}, data, config.eval) == {}
