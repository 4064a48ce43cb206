"""2-D toy distributions, generated in code (no download).

Convention, used by every method, plot and metric in this project (written down once, here):
  * sevenaniso and bands are mixtures of anisotropic, rotated Gaussians with unequal weights (formulas
    below), with exact densities, for testing how well an energy is a density.
  * Scales follow the MEG reference code: 25-Gaussians is a 5x5 grid of centres {-4,-2,0,2,4}^2 with
    std 0.05, all divided by 2.828; 8-Gaussians has centres on the circle of radius 2 with std 0.02,
    divided by 1.414; the swiss roll is sklearn's make_swiss_roll(noise=0.25) on axes (0, 2) divided
    by 7.5. Kim & Bengio's two-spiral and four-spin toys (their Figure 2) are restated from the
    common generators (formulas in _two_spirals and _four_spin) at the same scale. Every toy fits
    in the square [-2, 2]^2 (TOY_EXTENT).
  * Densities, KL and NLL are computed on a uniform grid over [-extent, extent]^2 with
    config.eval.grid_size points per side, at the temperature config.sampling.temperature (p
    proportional to exp(-E/T); T = 1 unless a method's toy config tunes it).
  * Pictures put x on the horizontal axis and y on the vertical axis growing upwards
    (imshow origin='lower'); there is no vertical flip.
"""
import dataclasses
from typing import Callable, Optional

import numpy as np

TOY_EXTENT = 2.0


@dataclasses.dataclass(frozen=True)
class ToySpec:
    sample: Callable[[np.random.Generator, int], np.ndarray]
    # For Gaussian mixtures: (K, 2) centres and the common isotropic std; enables KL / mode metrics.
    centers: Optional[np.ndarray] = None
    std: Optional[float] = None
    # Exact log density where one is known (evaluated on the grid for KL(p_data || p_model)).
    log_density: Optional[Callable[[np.ndarray], np.ndarray]] = None
    # Mixtures with other shapes: (K, 2, 2) covariances (then "within 3 std" is a Mahalanobis distance
    # below 3) and (K,) weights (the mode-frequency KL compares the samples' modes with them)
    covariances: Optional[np.ndarray] = None
    weights: Optional[np.ndarray] = None


def _mixture(centers, std):
    centers = np.asarray(centers, np.float64)

    def sample(rng, n):
        idx = rng.integers(0, len(centers), size=n)
        return (centers[idx] + std * rng.standard_normal((n, 2))).astype(np.float32)

    def log_density(x):
        x = np.asarray(x, np.float64)
        d2 = np.sum((x[:, None, :] - centers[None]) ** 2, axis=-1)
        logs = -d2 / (2 * std ** 2) - np.log(2 * np.pi * std ** 2) - np.log(len(centers))
        m = logs.max(axis=1, keepdims=True)
        return (m + np.log(np.sum(np.exp(logs - m), axis=1, keepdims=True)))[:, 0]

    return ToySpec(sample=sample, centers=centers, std=float(std), log_density=log_density,
                   weights=np.full(len(centers), 1.0 / len(centers)))


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _anisotropic_mixture(centers, stds, angles, weights):
    """Gaussians with covariance R(angle) diag(std^2) R(angle)^T and unequal weights (summing to 1)."""
    centers = np.asarray(centers, np.float64)
    weights = np.asarray(weights, np.float64) / np.sum(weights)
    covs = np.stack([_rotation(a) @ np.diag(np.square(sd)) @ _rotation(a).T for sd, a in zip(stds, angles)])
    chols = np.linalg.cholesky(covs)
    inv = np.linalg.inv(covs)
    log_norm = -np.log(2 * np.pi) - 0.5 * np.log(np.linalg.det(covs)) + np.log(weights)

    def sample(rng, n):
        idx = rng.choice(len(centers), size=n, p=weights)
        eps = rng.standard_normal((n, 2))
        return (centers[idx] + np.einsum("nij,nj->ni", chols[idx], eps)).astype(np.float32)

    def log_density(x):
        r = np.asarray(x, np.float64)[:, None, :] - centers[None]
        logs = -0.5 * np.einsum("nki,kij,nkj->nk", r, inv, r) + log_norm[None]
        m = logs.max(axis=1, keepdims=True)
        return (m + np.log(np.sum(np.exp(logs - m), axis=1, keepdims=True)))[:, 0]

    return ToySpec(sample=sample, centers=centers, std=None, log_density=log_density, covariances=covs,
                   weights=weights)


def _seven_anisotropic():
    # Seven rotated, elongated Gaussians with weights 1..7 / 28: six on a ring of radius 1.2 (each
    # stretched along its own direction, 3:1 to 6:1) and a round one, the heaviest, at the centre.
    angles = np.arange(6) * np.pi / 3 + 0.3
    centers = np.concatenate([1.2 * np.stack([np.cos(angles), np.sin(angles)], 1), [[0.0, 0.0]]])
    stds = [(0.18, 0.06), (0.24, 0.05), (0.15, 0.05), (0.30, 0.05), (0.20, 0.04), (0.12, 0.04), (0.12, 0.12)]
    rot = list(angles + (np.arange(6) % 2) * np.pi / 2) + [0.0]   # alternately radial and tangential
    return _anisotropic_mixture(centers, stds, rot, [1, 2, 3, 4, 5, 6, 7])


def _banded_mixture():
    # Five components of very different sizes and weights: two long thin diagonal bands crossing at
    # different heights, a wide round blob, a small sharp one and a medium ellipse.
    centers = [[-0.8, 0.8], [0.8, -0.6], [0.9, 1.0], [-1.1, -1.1], [0.0, 0.0]]
    stds = [(0.45, 0.04), (0.45, 0.05), (0.25, 0.25), (0.03, 0.03), (0.20, 0.08)]
    angles = [np.pi / 4, -np.pi / 4, 0.0, 0.0, np.pi / 8]
    return _anisotropic_mixture(centers, stds, angles, [0.30, 0.25, 0.25, 0.05, 0.15])


def _twentyfive_gaussians():
    centers = np.array([(2.0 * i, 2.0 * j) for i in range(-2, 3) for j in range(-2, 3)]) / 2.828
    return _mixture(centers, 0.05 / 2.828)


def _eight_gaussians():
    s = 1.0 / np.sqrt(2.0)
    unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
    return _mixture(2.0 * np.array(unit) / 1.414, 0.02 / 1.414)


def _swissroll():
    # sklearn.datasets.make_swiss_roll restated (to avoid a dependency): t ~ 1.5 pi (1 + 2U),
    # (t cos t, t sin t) plus N(0, 0.25^2) noise, divided by 7.5 as in the MEG reference.
    def sample(rng, n):
        t = 1.5 * np.pi * (1 + 2 * rng.random(n))
        x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.25 * rng.standard_normal((n, 2))
        return (x / 7.5).astype(np.float32)
    return ToySpec(sample=sample)


def _checkerboard():
    # Alternating squares of side 0.5 on [-2, 2]^2; the density is uniform on the dark squares.
    def in_support(x):
        i = np.floor(x[:, 0] / 0.5).astype(int)
        j = np.floor(x[:, 1] / 0.5).astype(int)
        return ((i + j) % 2 == 0) & (np.abs(x[:, 0]) < 2) & (np.abs(x[:, 1]) < 2)

    def sample(rng, n):
        out = np.empty((0, 2))
        while len(out) < n:
            cand = rng.uniform(-2, 2, size=(2 * n, 2))
            out = np.concatenate([out, cand[in_support(cand)]])
        return out[:n].astype(np.float32)

    area = 16.0 / 2.0

    def log_density(x):
        return np.where(in_support(np.asarray(x)), -np.log(area), -np.inf)

    return ToySpec(sample=sample, log_density=log_density)


def _two_spirals():
    # Two interleaved spirals (the widespread '2spirals' generator): n = sqrt(U) * 3 pi,
    # arm 1 = (-n cos n + 0.5 U', n sin n + 0.5 U''), arm 2 = -arm 1; divided by 6 (not 3) so that the
    # toy fits in [-2, 2]^2, then N(0, 0.05^2) noise (half the usual 0.1, as the scale is halved).
    def sample(rng, n):
        half = n // 2 + 1
        t = np.sqrt(rng.random(half)) * 3.0 * np.pi
        arm = np.stack([-np.cos(t) * t + 0.5 * rng.random(half), np.sin(t) * t + 0.5 * rng.random(half)], axis=1)
        x = np.concatenate([arm, -arm])[rng.permutation(2 * half)[:n]] / 6.0
        return (x + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)
    return ToySpec(sample=sample)


def _four_spin():
    # Four spinning arms (the 'pinwheel' generator with 4 classes): (u, v) ~ N((1, 0), diag(0.3^2, 0.1^2)),
    # rotated by the angle k pi / 2 + 0.25 exp(u) for arm k in {0, 1, 2, 3}.
    def sample(rng, n):
        u = 1.0 + 0.3 * rng.standard_normal(n)
        v = 0.1 * rng.standard_normal(n)
        angle = rng.integers(0, 4, size=n) * (np.pi / 2) + 0.25 * np.exp(u)
        c, s = np.cos(angle), np.sin(angle)
        return np.stack([c * u - s * v, s * u + c * v], axis=1).astype(np.float32)
    return ToySpec(sample=sample)


TOYS = {
    "25gaussians": _twentyfive_gaussians,
    "8gaussians": _eight_gaussians,
    "swissroll": _swissroll,
    "checkerboard": _checkerboard,
    "twospirals": _two_spirals,
    "fourspin": _four_spin,
    "sevenaniso": _seven_anisotropic,
    "bands": _banded_mixture,
}


def get_toy(name: str) -> ToySpec:
    if name not in TOYS:
        raise ValueError(f"data.name {name!r} is not a known dataset; valid names are {sorted(TOYS)} "
                         "(or set data.path to a .npy/.npz file of shape (N, D)).")
    return TOYS[name]()
