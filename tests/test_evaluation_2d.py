"""2-D evaluation (grid, density, KL, mode metrics) and the toy datasets against exact computations."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.data.toys import get_toy
from ebm_jax.evaluation.toy2d import grid_log_density, grid_points, kl_on_grid, mode_metrics


# --------------------------------------------------------------------------------------------------
# grid_points

@pytest.mark.parametrize("extent,size", [(2.0, 4), (1.5, 7)])
def test_grid_points_cell_centred_and_oriented(extent, size):
    axis, pts, area = grid_points(extent, size)
    step = 2.0 * extent / size
    # Cell centres: the k-th cell is [-extent + k*step, -extent + (k+1)*step].
    expect_axis = np.array([-extent + (k + 0.5) * step for k in range(size)])
    np.testing.assert_allclose(axis, expect_axis, rtol=0, atol=1e-12)
    assert pts.shape == (size * size, 2)
    np.testing.assert_allclose(area, (2.0 * extent / size) ** 2, rtol=1e-12)
    # Symmetric about 0, strictly inside the box, one half step from the edges.
    np.testing.assert_allclose(axis[0], -extent + step / 2, atol=1e-12)
    np.testing.assert_allclose(axis[-1], extent - step / 2, atol=1e-12)

    xs = pts[:, 0].reshape(size, size)
    ys = pts[:, 1].reshape(size, size)
    for i in range(size):
        for j in range(size):
            # Column j carries x = axis[j]; row i carries y = axis[i]; row 0 is the lowest y.
            np.testing.assert_allclose(xs[i, j], expect_axis[j], atol=1e-6)
            np.testing.assert_allclose(ys[i, j], expect_axis[i], atol=1e-6)
    assert np.all(np.diff(ys[:, 0]) > 0)  # y increases with the row index
    assert np.all(np.diff(xs[0, :]) > 0)  # x increases with the column index
    # The cells tile the square: total area is (2 extent)^2.
    np.testing.assert_allclose(area * size * size, (2 * extent) ** 2, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# grid_log_density

@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_grid_log_density_matches_exact_gaussian(temperature):
    extent, size = 2.0, 160
    mean = np.array([0.41, -0.27])  # off-centre (and inside a cell), so a transposed image is caught
    s = 0.3

    def energy(x):
        m = jnp.asarray(mean, x.dtype)
        return jnp.sum((x - m) ** 2, axis=1) / (2 * s * s)

    log_p, log_z = grid_log_density(energy, extent, size, temperature)
    assert log_p.shape == (size, size)

    # exp(-E/T) is (2 pi var) N(mean, var I) with var = s^2 T. Z over the box [-extent, extent]^2 is
    # 2 pi var times the Gaussian mass of the box (exact, from erf); at T = 2 the truncation matters
    # at the 1e-4 level, at T = 1 it is ~1e-8.
    var = s * s * temperature
    sd = math.sqrt(var)

    def phi(t):
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))

    box_mass = np.prod([phi((extent - m) / sd) - phi((-extent - m) / sd) for m in mean])
    exact_log_z = np.log(2 * np.pi * var) + np.log(box_mass)
    np.testing.assert_allclose(log_z, exact_log_z, atol=1e-6)
    if temperature == 1.0:  # well inside the grid: the untruncated normaliser too
        np.testing.assert_allclose(log_z, np.log(2 * np.pi * var), atol=1e-6)

    step = 2 * extent / size
    coords = -extent + step * (np.arange(size) + 0.5)
    expect = np.empty((size, size))
    for i in range(size):  # row i: y = coords[i]
        y = coords[i]
        expect[i, :] = (-((coords - mean[0]) ** 2 + (y - mean[1]) ** 2) / (2 * var)
                        - exact_log_z)
    # Compare where the density is not negligible (float32 energies lose relative precision far out).
    sig = expect > np.log(1e-8)
    np.testing.assert_allclose(log_p[sig], expect[sig], rtol=0, atol=1e-4)
    # The peak is in the right cell: row from y, column from x.
    i_max, j_max = np.unravel_index(np.argmax(log_p), log_p.shape)
    assert j_max == np.argmin(np.abs(coords - mean[0]))
    assert i_max == np.argmin(np.abs(coords - mean[1]))
    # Normalised over the grid.
    np.testing.assert_allclose(np.sum(np.exp(log_p)) * step * step, 1.0, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# kl_on_grid

def _kl_double_loop(log_p, log_q):
    log_p = np.asarray(log_p, np.float64)
    log_q = np.asarray(log_q, np.float64)
    zp = 0.0
    zq = 0.0
    n, m = log_p.shape
    for i in range(n):
        for j in range(m):
            zp += np.exp(log_p[i, j])
            zq += np.exp(log_q[i, j])
    total = 0.0
    for i in range(n):
        for j in range(m):
            pij = np.exp(log_p[i, j]) / zp
            qij = np.exp(log_q[i, j]) / zq
            if pij > 0:
                total += pij * np.log(pij / qij)
    return total


def test_kl_on_grid_matches_double_loop():
    rng = np.random.default_rng(0)
    log_p = rng.normal(size=(9, 9)) * 2.0 + 3.0  # unnormalised on purpose
    log_q = rng.normal(size=(9, 9)) * 1.5 - 7.0
    got = kl_on_grid(log_p, log_q)
    expect = _kl_double_loop(log_p, log_q)
    np.testing.assert_allclose(got, expect, rtol=1e-10)
    assert got > 0
    # Invariant to additive constants (only normalised cell masses matter).
    np.testing.assert_allclose(kl_on_grid(log_p + 11.0, log_q - 4.0), expect, rtol=1e-10)
    # Asymmetric.
    assert abs(kl_on_grid(log_q, log_p) - got) > 1e-3


def test_kl_on_grid_identical_is_zero():
    log_p = np.random.default_rng(1).normal(size=(6, 6))
    assert abs(kl_on_grid(log_p, log_p)) < 1e-12
    assert abs(kl_on_grid(log_p, log_p + 5.0)) < 1e-12


def test_kl_on_grid_handles_zero_mass_cells():
    rng = np.random.default_rng(2)
    log_p = rng.normal(size=(8, 8))
    log_p[::2, 1::2] = -np.inf  # checkerboard of zero-mass cells
    log_q = rng.normal(size=(8, 8))
    got = kl_on_grid(log_p, log_q)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _kl_double_loop(log_p, log_q), rtol=1e-10)

    # The model may also be zero where the data is zero.
    log_q2 = log_q.copy()
    log_q2[::2, 1::2] = -np.inf
    got2 = kl_on_grid(log_p, log_q2)
    assert np.isfinite(got2)
    np.testing.assert_allclose(got2, _kl_double_loop(log_p, log_q2), rtol=1e-10)
    assert abs(kl_on_grid(log_p, log_p)) < 1e-12

    # A model that is zero where the data has mass gives +inf, not NaN.
    log_q3 = log_q.copy()
    log_q3[0, 0] = -np.inf
    with np.errstate(all="ignore"):
        got3 = kl_on_grid(log_p, log_q3)
    assert got3 == np.inf


# --------------------------------------------------------------------------------------------------
# mode_metrics

def test_mode_metrics_hand_counted():
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    std = 1.0  # high quality: distance to nearest centre < 3
    samples = np.array([
        # centre 0: three high-quality hits, one nearest-but-too-far sample
        [0.0, 0.0], [1.0, 0.0], [0.0, -2.9], [3.5, 0.0],
        # centre 1: one high-quality hit
        [10.5, 0.0],
        # centre 2: two high-quality hits (one at distance 2.12 diagonally)
        [0.0, 9.0], [1.5, 11.5],
        # centre 3: no hits; a far-away sample whose nearest centre is 3 (not high quality)
        [25.0, 25.0],
        # between centres 0 and 1, nearest is 1 at distance 4: not high quality
        [6.0, 0.0],
    ])
    n = len(samples)
    hq = 3 + 1 + 2
    out = mode_metrics(samples, centers, std, min_count=2)
    assert out["num_modes"] == 4
    assert out["modes_covered"] == 2          # centres 0 (3 hits) and 2 (2 hits)
    np.testing.assert_allclose(out["high_quality_fraction"], hq / n)

    assert mode_metrics(samples, centers, std, min_count=1)["modes_covered"] == 3
    assert mode_metrics(samples, centers, std, min_count=3)["modes_covered"] == 1
    assert mode_metrics(samples, centers, std, min_count=4)["modes_covered"] == 0
    # min_count 0 still requires at least one hit: centre 3 has none.
    assert mode_metrics(samples, centers, std, min_count=0)["modes_covered"] == 3

    # Scale with std: with std = 2 (threshold 6) the samples at 3.5 and 4 become high quality too.
    out2 = mode_metrics(samples, centers, 2.0, min_count=2)
    np.testing.assert_allclose(out2["high_quality_fraction"], (hq + 2) / n)
    assert out2["modes_covered"] == 3         # centre 0: 4 hits, centre 1: 2 hits, centre 2: 2 hits


def test_mode_metrics_sample_counts_for_its_nearest_centre_only():
    centers = np.array([[0.0, 0.0], [4.0, 0.0]])
    # With std 2 (threshold 6) both samples are within 3 std of both centres, but each counts once,
    # for its nearest centre: (2.5, 0) -> centre 1, (1, 0) -> centre 0.
    samples = np.array([[2.5, 0.0], [2.6, 0.0], [1.0, 0.0]])
    out = mode_metrics(samples, centers, 2.0, min_count=2)
    assert out["modes_covered"] == 1
    np.testing.assert_allclose(out["high_quality_fraction"], 1.0)
    assert mode_metrics(samples, centers, 2.0, min_count=1)["modes_covered"] == 2


# --------------------------------------------------------------------------------------------------
# Toys: 25 Gaussians

def _direct_mixture_log_density(points, centers, std):
    out = []
    for p in points:
        total = 0.0
        for c in centers:
            d2 = (p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2
            total += np.exp(-d2 / (2 * std * std)) / (2 * np.pi * std * std)
        out.append(np.log(total / len(centers)))
    return np.array(out)


def test_25gaussians_log_density_normalised_and_matches_mixture():
    toy = get_toy("25gaussians")
    s = 0.05 / 2.828
    expect_centers = np.array([(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)]) / 2.828

    # Integrates to 1 over a fine grid (cell 0.008 < std 0.0177; midpoint rule for Gaussians is exact
    # up to ~exp(-2 pi^2 std^2 / cell^2), and all centres are far inside [-2, 2]^2).
    extent, size = 2.0, 500
    step = 2 * extent / size
    axis = -extent + step * (np.arange(size) + 0.5)
    total = 0.0
    for y in axis[::1]:
        row = np.stack([axis, np.full(size, y)], axis=1)
        total += np.sum(np.exp(toy.log_density(row))) * step * step
    np.testing.assert_allclose(total, 1.0, atol=1e-6)

    pts = np.array([
        expect_centers[0], expect_centers[12] + [0.3 * s, -0.5 * s], expect_centers[7] + [s, s],
        expect_centers[24] + [2 * s, 0.0], (expect_centers[0] + expect_centers[1]) / 2, [0.1, 0.05],
    ])
    got = toy.log_density(pts)
    direct = _direct_mixture_log_density(pts, expect_centers, s)
    assert np.all(np.isfinite(direct))
    np.testing.assert_allclose(got, direct, rtol=1e-9, atol=1e-9)


def test_25gaussians_samples_have_documented_scale():
    toy = get_toy("25gaussians")
    s = 0.05 / 2.828
    expect_centers = np.array([(a, b) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)]) / 2.828
    np.testing.assert_allclose(toy.std, s, rtol=1e-12)
    # Same set of centres (order-insensitive).
    key = lambda c: np.lexsort((c[:, 1], c[:, 0]))
    np.testing.assert_allclose(toy.centers[key(toy.centers)], expect_centers[key(expect_centers)], atol=1e-12)

    n = 50000
    x = np.asarray(toy.sample(np.random.default_rng(0), n), np.float64)
    assert x.shape == (n, 2)
    assert np.all(np.abs(x) < 2.0)  # fits in [-2, 2]^2
    d = np.sqrt(((x[:, None, :] - expect_centers[None]) ** 2).sum(-1))
    nearest = np.argmin(d, axis=1)
    resid = x - expect_centers[nearest]
    assert np.max(np.abs(resid)) < 7 * s  # every sample is near a documented centre
    # Per-coordinate std of the residuals within 5 standard errors (SE of a std ~ s / sqrt(2n)).
    np.testing.assert_allclose(resid.std(axis=0), s, atol=5 * s / np.sqrt(2 * n))
    np.testing.assert_allclose(resid.mean(axis=0), 0.0, atol=5 * s / np.sqrt(n))
    # Components equally likely: binomial counts within 5 sigma of n/25.
    counts = np.bincount(nearest, minlength=25)
    p = 1 / 25
    assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p))), counts


def test_get_toy_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_toy("nope")
    msg = str(info.value)
    assert "nope" in msg
    for name in ("25gaussians", "8gaussians", "swissroll", "checkerboard"):
        assert name in msg


def test_histogram_reference_density_matches_the_exact_one():
    """Where a toy has a closed-form density, the histogram stand-in (used for the swiss roll, two
    spirals and four spin) gives the same KL against a model to within its Monte Carlo error."""
    from ebm_jax.data import toys
    from ebm_jax.evaluation.toy2d import grid_points, histogram_log_density, kl_on_grid
    base = toys.get_toy("8gaussians")
    # wide enough modes (std 0.07) that the point density at cell centres is the cell mass at this grid
    spec = toys._mixture(base.centers, 5 * base.std)
    size, extent = 200, 2.0
    _, pts, _ = grid_points(extent, size)
    exact = spec.log_density(pts).reshape(size, size)
    hist = histogram_log_density(spec.sample, extent, size)
    model = toys._mixture(base.centers, 10 * base.std).log_density(pts).reshape(size, size)
    assert abs(kl_on_grid(hist, model) - kl_on_grid(exact, model)) < 0.03
    assert kl_on_grid(hist, exact) < 0.03
    size = 60
    for name in ("swissroll", "twospirals", "fourspin"):
        h = histogram_log_density(toys.get_toy(name).sample, extent, size)
        assert np.isclose(np.exp(h).sum(), 1.0, atol=1e-3)   # (almost) all mass inside [-2, 2]^2


# --------------------------------------------------------------------------------------------------
# evaluate_2d end to end on analytic energies

def gaussian_kl(m0, s0, m1, s1):
    """KL(N(m0, s0) || N(m1, s1)) in closed form."""
    s1_inv = np.linalg.inv(s1)
    dm = m1 - m0
    return 0.5 * (np.trace(s1_inv @ s0) + dm @ s1_inv @ dm - len(m0) + np.log(np.linalg.det(s1) / np.linalg.det(s0)))


@pytest.mark.parametrize("grid_extent", [0.0, 6.0])
def test_evaluate_2d_on_gaussians_against_closed_forms(grid_extent):
    """Data N(m_d, S_d) (a ToySpec with its exact density), model E(x) = (x - m)^T S^-1 (x - m) / 2 + c with
    a diagonal S: log Z = log 2 pi + log det S / 2 - c, the held-out NLL, both KL directions and the model's
    mass outside the square [-2, 2]^2 have closed forms. grid_extent 0 is twice the square's half-width (4)."""
    import ml_collections
    from ebm_jax.data.datasets import Dataset
    from ebm_jax.data.toys import ToySpec
    from ebm_jax.evaluation.toy2d import evaluate_2d

    m_d, s_d = np.array([0.3, -0.2]), np.array([[0.25, 0.1], [0.1, 0.16]])
    m_m, s_m, c = np.array([-0.1, 0.2]), np.diag([0.49, 0.81]), 1.7
    chol, s_d_inv = np.linalg.cholesky(s_d), np.linalg.inv(s_d)

    def data_log_density(x):
        r = np.asarray(x, np.float64) - m_d
        return -0.5 * np.einsum("ni,ij,nj->n", r, s_d_inv, r) - np.log(2 * np.pi) - 0.5 * np.log(np.linalg.det(s_d))

    def sample(rng, n):
        return (m_d + rng.standard_normal((n, 2)) @ chol.T).astype(np.float32)

    toy = ToySpec(sample=sample, log_density=data_log_density)
    rng = np.random.default_rng(0)
    dataset = Dataset("gaussian", sample(rng, 100), sample(rng, 500), 0, toy=toy, extent=2.0)

    def energy(x):
        r = x - jnp.asarray(m_m, x.dtype)
        return 0.5 * jnp.sum(r ** 2 / jnp.asarray(np.diag(s_m), x.dtype), axis=1) + c

    cfg = ml_collections.ConfigDict({"grid_size": 200, "mode_min_count": 5, "grid_extent": grid_extent})
    metrics, log_p = evaluate_2d(energy, dataset, cfg)

    log_z = np.log(2 * np.pi) + 0.5 * np.log(np.linalg.det(s_m)) - c
    t = np.asarray(dataset.test, np.float64) - m_m
    nll = np.mean(0.5 * np.sum(t ** 2 / np.diag(s_m), axis=1) + c) + log_z
    erf = np.vectorize(math.erf)
    inside = np.prod(0.5 * (erf((2.0 - m_m) / np.sqrt(2 * np.diag(s_m))) - erf((-2.0 - m_m) / np.sqrt(2 * np.diag(s_m)))))
    # the metric grid [-R, R]^2 misses the mass beyond R: ~1e-5 at R = 4 for the model's std 0.9
    tol = 2e-4 if grid_extent == 0.0 else 1e-6
    assert metrics["log_partition"] == pytest.approx(log_z, abs=tol)
    assert metrics["test_nll"] == pytest.approx(nll, abs=tol)
    assert metrics["kl_data_model"] == pytest.approx(gaussian_kl(m_d, s_d, m_m, s_m), abs=tol)
    assert metrics["kl_model_data"] == pytest.approx(gaussian_kl(m_m, s_m, m_d, s_d), abs=5 * tol)
    # (the midpoint rule's O(cell^2) error where the square cuts through the density: ~5e-6 here)
    assert metrics["density/mass_outside_square"] == pytest.approx(1.0 - inside, abs=max(tol, 2e-5))
    assert metrics["density/mass_at_grid_edge"] < (1e-3 if grid_extent == 0.0 else 1e-8)
    # the picture: the square's 200 x 200 cells, normalised over the square
    assert log_p.shape == (200, 200)
    assert np.sum(np.exp(log_p)) * 0.02 ** 2 == pytest.approx(1.0, abs=1e-9)


def test_fitted_temperature_is_the_maximum_likelihood_scale_of_the_training_points():
    """E(x) = a ||x||^2 / 2 + c makes exp(-beta E)/Z_beta = N(0, I / (a beta)), whose maximum-likelihood
    variance on the training points is mean ||x||^2 / 2: beta = 2 / (a mean ||x||^2). The training and
    held-out points come from different widths, so a fit on the held-out split would miss; the KL and
    the held-out NLL at the fitted beta have closed forms, and T = 1 (a too flat energy) is far worse."""
    import ml_collections
    from ebm_jax.data.datasets import Dataset
    from ebm_jax.data.toys import ToySpec
    from ebm_jax.evaluation.toy2d import evaluate_2d

    s_data, s_test, a, c = 0.4, 0.6, 0.8, -3.0
    toy = ToySpec(sample=lambda rng, n: (s_data * rng.standard_normal((n, 2))).astype(np.float32),
                  log_density=lambda x: (-0.5 * np.sum(np.asarray(x, np.float64) ** 2, axis=1) / s_data ** 2
                                         - np.log(2 * np.pi * s_data ** 2)))
    rng = np.random.default_rng(3)
    train = (s_data * rng.standard_normal((4000, 2))).astype(np.float32)
    test = (s_test * rng.standard_normal((700, 2))).astype(np.float32)
    dataset = Dataset("gaussian", train, test, 0, toy=toy, extent=2.0)
    cfg = ml_collections.ConfigDict({"grid_size": 200, "mode_min_count": 5, "grid_extent": 0.0})
    metrics, _ = evaluate_2d(lambda x: 0.5 * a * jnp.sum(x ** 2, axis=1) + c, dataset, cfg)

    v = np.mean(np.sum(train.astype(np.float64) ** 2, axis=1)) / 2.0   # the fitted per-axis variance
    assert metrics["fitted/inverse_temperature"] == pytest.approx(1.0 / (a * v), rel=1e-3)
    cov = lambda var: var * np.eye(2)  # noqa: E731
    assert metrics["fitted/kl_data_model"] == pytest.approx(gaussian_kl(np.zeros(2), cov(s_data ** 2), np.zeros(2), cov(v)), abs=2e-4)
    nll = np.mean(np.sum(test.astype(np.float64) ** 2, axis=1)) / (2 * v) + np.log(2 * np.pi * v)
    assert metrics["fitted/test_nll"] == pytest.approx(nll, abs=2e-4)
    # (at T = 1 the model's std is 1.1, and the metric grid [-4, 4]^2 cuts ~1e-3 of its mass off)
    assert metrics["kl_data_model"] == pytest.approx(gaussian_kl(np.zeros(2), cov(s_data ** 2), np.zeros(2), cov(1 / a)), abs=2e-3)
    assert metrics["kl_data_model"] > 0.5 > 0.01 > metrics["fitted/kl_data_model"]


def test_kl_split_into_mass_off_and_among_the_components_and_shape():
    """On sevenaniso, a model of the data's seven components at other weights w' is wrong only in its
    mass per component: kl_among_modes is KL(w || w') written here from the weights alone, and
    kl_off_modes and kl_within_modes are 0; with the data's weights and every component twice as wide it
    puts mass off the components and is wrong in shape, not in its mass per component; the flat energy
    of the uniform density on the square puts nearly all its mass off them. The three add up to the KL,
    at T = 1 and at the fitted temperature."""
    import ml_collections
    from ebm_jax.data.datasets import Dataset
    from ebm_jax.evaluation.toy2d import evaluate_2d

    toy = get_toy("sevenaniso")
    rng = np.random.default_rng(5)
    dataset = Dataset("sevenaniso", toy.sample(rng, 3000), toy.sample(rng, 500), 0, toy=toy, extent=2.0)
    cfg = ml_collections.ConfigDict({"grid_size": 200, "mode_min_count": 5, "grid_extent": 0.0})

    def mixture_energy(weights, covs):
        inv, log_det = np.linalg.inv(covs), np.log(np.linalg.det(covs))

        def energy(x):
            r = np.asarray(x, np.float64)[:, None, :] - toy.centers[None]
            logs = np.log(weights)[None] - np.log(2 * np.pi) - 0.5 * log_det[None] - 0.5 * np.einsum("nki,kij,nkj->nk", r, inv, r)
            m = logs.max(axis=1, keepdims=True)
            return -(m[:, 0] + np.log(np.sum(np.exp(logs - m), axis=1)))
        return energy

    def split(metrics, prefix=""):
        parts = [metrics[prefix + k] for k in ("kl_off_modes", "kl_among_modes", "kl_within_modes")]
        assert sum(parts) == pytest.approx(metrics[prefix + "kl_data_model"], abs=1e-9)
        return parts

    w = toy.weights
    w_model = np.array([7.0, 1, 6, 2, 5, 3, 4])
    w_model = w_model / w_model.sum()
    metrics, _ = evaluate_2d(mixture_energy(w_model, toy.covariances), dataset, cfg)
    off, among, within = split(metrics)
    split(metrics, "fitted/")
    assert among == pytest.approx(np.sum(w * np.log(w / w_model)), abs=1e-3)
    assert max(abs(off), abs(within)) < 1e-3 < 0.1 < among

    off, among, within = split(*evaluate_2d(mixture_energy(w, 4.0 * toy.covariances), dataset, cfg)[:1])
    assert off > 0.1 and within > 0.1 and abs(among) < 0.02

    # the uniform density on the square: off is the KL between the data's mass on and off the components
    # (1 - exp(-8), exp(-8)) and the share of the square within 4 stds of a component and outside them,
    # counted here on the metric grid's 400 x 400 cells
    metrics, _ = evaluate_2d(lambda x: np.where(np.all(np.abs(x) < 2.0, axis=1), 0.0, 50.0), dataset, cfg)
    off, among, within = split(metrics)
    axis = -4.0 + 0.02 * (np.arange(400) + 0.5)
    pts = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    pts = pts[np.all(np.abs(pts) < 2.0, axis=1)]
    near = np.zeros(len(pts), bool)
    for c, cov in zip(toy.centers, toy.covariances):
        r = pts - c
        near |= np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r) < 16.0
    p_off, q_on = np.exp(-8.0), near.mean()   # a 2-D Gaussian's mass beyond Mahalanobis distance 4: exp(-16 / 2)
    assert off == pytest.approx((1 - p_off) * np.log((1 - p_off) / q_on) + p_off * np.log(p_off / (1 - q_on)), abs=2e-4)
    assert off > 1.0 and within > 1.0


def test_fitted_temperature_stays_within_its_bounds():
    """An energy that does not depend on x has a flat log-likelihood in beta: the fit returns the lower
    bound rather than wandering; one whose data sit on its maxima wants beta -> 0 as well."""
    from ebm_jax.evaluation.toy2d import INVERSE_TEMPERATURE_RANGE, fit_inverse_temperature
    grid = np.linspace(0.0, 5.0, 101)
    assert fit_inverse_temperature(np.zeros(50), np.zeros(10)) == INVERSE_TEMPERATURE_RANGE[0]
    assert fit_inverse_temperature(grid, np.full(10, 5.0)) == INVERSE_TEMPERATURE_RANGE[0]
    assert fit_inverse_temperature(grid, np.zeros(10)) == INVERSE_TEMPERATURE_RANGE[1]


def test_evaluate_2d_reverse_kl_only_where_the_data_density_has_no_holes():
    """The checkerboard's density is 0 on half the square: KL(model || data) would be infinite, so it is
    not reported; KL(data || model) still is."""
    import ml_collections
    from ebm_jax.data.datasets import Dataset
    from ebm_jax.evaluation.toy2d import evaluate_2d

    toy = get_toy("checkerboard")
    x = toy.sample(np.random.default_rng(0), 600)
    dataset = Dataset("checkerboard", x[:500], x[500:], 0, toy=toy, extent=2.0)
    cfg = ml_collections.ConfigDict({"grid_size": 40, "mode_min_count": 5})
    metrics, _ = evaluate_2d(lambda v: 0.1 * jnp.sum(v ** 2, axis=1), dataset, cfg)
    assert "kl_model_data" not in metrics and np.isfinite(metrics["kl_data_model"])


@pytest.mark.parametrize("name", ["sevenaniso", "bands"])
def test_anisotropic_mixtures_sample_their_own_density(name):
    """The exact density integrates to 1 on the grid and agrees with a histogram of fresh samples (KL of
    the histogram against it within Monte Carlo error); the weights and covariances are what the
    samples show: the component sample fractions and their covariances."""
    from ebm_jax.data import toys
    from ebm_jax.evaluation.toy2d import grid_points, histogram_log_density, kl_on_grid
    spec = toys.get_toy(name)
    size, extent = 120, 2.0
    _, pts, area = grid_points(extent, size)
    exact = spec.log_density(pts).reshape(size, size)
    assert abs(np.exp(exact).sum() * area - 1.0) < 1e-3
    assert kl_on_grid(histogram_log_density(spec.sample, extent, size), exact) < 0.02
    x = spec.sample(np.random.default_rng(3), 200_000).astype(np.float64)
    inv = np.linalg.inv(spec.covariances)
    r = x[:, None, :] - spec.centers[None]
    comp = np.argmin(np.einsum("nki,kij,nkj->nk", r, inv, r), axis=1)
    np.testing.assert_allclose(np.bincount(comp, minlength=len(spec.weights)) / len(x), spec.weights, atol=0.01)


def test_mode_metrics_mahalanobis_and_mode_frequency_kl_by_hand():
    centers = np.array([[0.0, 0.0], [1.0, 0.0]])
    covs = np.stack([np.diag([0.1 ** 2, 0.01 ** 2]), np.diag([0.01 ** 2, 0.01 ** 2])])
    # (0.25, 0) is 2.5 std from centre 0 along its long axis: high quality; (0, 0.05) is 5 std across it
    samples = np.array([[0.25, 0.0], [0.0, 0.05], [1.0, 0.0], [1.02, 0.0]])
    weights = np.array([0.75, 0.25])
    out = mode_metrics(samples, centers, None, 1, covs, weights)
    assert out["high_quality_fraction"] == 0.75 and out["modes_covered"] == 2
    freq = np.array([1 + 1, 2 + 1]) / (3 + 2)   # add-one smoothed high-quality counts 1 and 2
    assert out["mode_frequency_kl"] == pytest.approx(np.sum(weights * np.log(weights / freq)))


def test_kde_kl_is_the_best_bandwidths_kl_of_a_gaussian_kde():
    """kde_kl against the KDE written afresh: every sample's Gaussian evaluated at every cell centre (no
    binning), the cell masses normalised, KL(p_data || q) taken in numpy, the minimum over the bandwidths."""
    from ebm_jax.evaluation import toy2d
    size, extent, scale = 120, 4.0, 60.0   # cell 0.067; bandwidths 0.3 .. 4.8, so binning moves little
    _, pts, _ = grid_points(extent, size)
    log_p = get_toy("sevenaniso").log_density(pts).astype(np.float64)
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    x = np.random.default_rng(0).normal(0.0, 1.3, (400, 2))
    kls = []
    for h in toy2d.KDE_BANDWIDTHS:
        d2 = np.sum((pts[:, None, :] - x[None]) ** 2, axis=-1)
        q = np.exp(-d2 / (2 * (h * scale) ** 2)).sum(axis=1)
        q = q / q.sum() * (1 - 1e-9) + 1e-9 / q.size   # the documented floor: empty cells stay finite
        m = p > 0
        kls.append(float(np.sum(p[m] * np.log(p[m] / q[m]))))
        assert toy2d.kde_kl(log_p.reshape(size, size), x, extent, scale, (h,)) == pytest.approx(kls[-1], abs=0.01)
    assert toy2d.kde_kl(log_p.reshape(size, size), x, extent, scale) == pytest.approx(min(kls), abs=0.01)
    # data draws score better than a sampler off by half a mode spacing, and non-finite samples are dropped
    toy = get_toy("sevenaniso")
    _, pts, _ = grid_points(4.0, 300)
    log_p = toy.log_density(pts).reshape(300, 300)
    draws = toy.sample(np.random.default_rng(1), 2000)
    good = toy2d.kde_kl(log_p, draws, 4.0, 2.0)
    assert good < 0.2 < toy2d.kde_kl(log_p, draws + 0.3, 4.0, 2.0)
    assert toy2d.kde_kl(log_p, np.concatenate([draws, np.full((5, 2), np.nan)]), 4.0, 2.0) == pytest.approx(good)
