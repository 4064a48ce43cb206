"""Evaluation of models of 2-D data on a grid (the convention is in ebm_jax/data/toys.py).

The model density is p(x) = exp(-E(x)/T) / Z, T = config.sampling.temperature (the temperature MCMC
samples at; 1 unless a config tunes it, and then `t1/kl_data_model` is the KL of exp(-E)/Z beside it),
with Z approximated by the Riemann sum of exp(-E/T) over a uniform, cell-centred grid. Two grids:
  * the picture's square [-extent, extent]^2 with eval.grid_size points per side;
  * the metric grid [-R, R]^2, R = eval.grid_extent (0 = twice the data's extent), at the same cell
    size. A model can put mass outside the square its data fill (MALA in data space drifts there),
    and normalising over the square alone would hide it; Z, the NLL and both KLs use the metric grid,
    and `density/mass_outside_square` / `density/mass_at_grid_edge` report how much of the model's
    mass lies outside the square and in the metric grid's outermost tenth (if the latter is not
    small, widen eval.grid_extent).
With it:
  * held-out NLL = mean over test points of E(x)/T + log Z (nats);
  * KL(p_data || p_model) (`kl_data_model`) for toys with a known density, between the two densities
    discretised on the metric grid (cell masses), in nats; and KL(p_model || p_data)
    (`kl_model_data`) where the data density is known in closed form and positive everywhere (the
    Gaussian mixtures; it is infinite for a density with holes, such as the checkerboard);
  * KL(p_data || KDE of the samples) (`generator/kl_data_kde`, `mcmc/kl_data_kde`): how good a density
    the sampler is, beside how good one the energy is, and `data/kl_data_kde`, the same for as many
    fresh data draws (what a perfect sampler would score with that many samples);
  * `fitted/inverse_temperature`: the 1/T that maximises the likelihood of (up to 16,384) training points
    under exp(-E/T)/Z_T, the energy held fixed, and `fitted/kl_data_model`, `fitted/test_nll` at it: an
    energy with its wells in the right places but too shallow (1/T > 1) or too steep (1/T < 1) scores
    much better there than at T = 1, one with misplaced wells does not;
  * for mixtures, `kl_off_modes` + `kl_among_modes` + `kl_within_modes` = `kl_data_model` (and the same
    under fitted/): the KL split by the chain rule over the components' regions (the cells within 4
    stds of a centre) and the rest, into what the model's mass off the components, its wrong mass per
    component and its wrong shape within them cost;
  * for Gaussian mixtures, each sample is assigned to its nearest centre; it is high quality if it is
    within 3 standard deviations of that centre, and a mode is covered if it receives at least
    `min_count` high-quality samples.
"""
import io
import os
from typing import Callable, Dict, Optional

import numpy as np


def grid_points(extent: float, size: int):
    """Cell-centred grid: returns (axis coordinates (size,), points (size*size, 2), cell area).

    points[i * size + j] = (axis[j], axis[i]): row i is the y coordinate, column j the x coordinate,
    so reshaping values to (size, size) gives an image with y along rows (plot with origin='lower').
    """
    step = 2.0 * extent / size
    axis = -extent + step * (np.arange(size) + 0.5)
    xx, yy = np.meshgrid(axis, axis)
    return axis, np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32), step * step


def batched(fn: Callable, x: np.ndarray, chunk: int = 16384) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + chunk])) for i in range(0, len(x), chunk)])


def _logsumexp(a):
    m = np.max(a)
    return m + np.log(np.sum(np.exp(a - m)))


def grid_log_density(energy_fn: Callable, extent: float, size: int, temperature: float = 1.0):
    """(log p on the grid as a (size, size) image, log Z) with p normalised over the grid."""
    _, pts, area = grid_points(extent, size)
    return normalised_on_grid(batched(energy_fn, pts), area, 1.0 / temperature)


def normalised_on_grid(grid_energy: np.ndarray, area: float, beta: float = 1.0):
    """(log p as a square image, log Z) of p = exp(-beta E) / Z from the energies at a square grid's cell
    centres (row-major, as grid_points), Z their Riemann sum with cells of `area`."""
    neg = -beta * np.asarray(grid_energy, np.float64)
    log_z = _logsumexp(neg) + np.log(area)
    n = int(round(np.sqrt(neg.size)))
    return (neg - log_z).reshape(n, n), float(log_z)


FIT_TEMPERATURE_POINTS = 16384   # training points the fitted temperature is computed on
INVERSE_TEMPERATURE_RANGE = (0.05, 20.0)


def fit_inverse_temperature(grid_energy: np.ndarray, data_energy: np.ndarray,
                            bounds=INVERSE_TEMPERATURE_RANGE) -> float:
    """The beta = 1/T maximising the mean log-likelihood of the points whose energies are `data_energy`
    under p_beta(x) = exp(-beta E(x)) / Z_beta, Z_beta the Riemann sum of exp(-beta E) over the grid:
    exact maximum likelihood of the energy's one free scale, with the energy itself fixed.

    NLL(beta) = beta mean E(data) + log Z_beta is convex in beta (log Z_beta is a cumulant generating
    function of -E), with derivative mean E(data) - E_{p_beta}[E], increasing in beta, so the optimum is
    the root of that derivative, found by bisection in log beta within `bounds` (or the bound it lies
    beyond)."""
    e = np.asarray(grid_energy, np.float64).ravel()
    target = float(np.mean(np.asarray(data_energy, np.float64)))

    def slope(beta):   # d NLL / d beta = mean E(data) - E_{p_beta}[E]
        a = -beta * e
        w = np.exp(a - np.max(a))
        return target - float(np.sum(w * e) / np.sum(w))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    if slope(np.exp(lo)) >= 0.0:
        return float(bounds[0])
    if slope(np.exp(hi)) <= 0.0:
        return float(bounds[1])
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(np.exp(mid)) < 0.0 else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def kl_on_grid(log_p_data: np.ndarray, log_p_model: np.ndarray) -> float:
    """KL(P_data || P_model) between cell masses proportional to exp(log p) on the same grid."""
    a = log_p_data.ravel().astype(np.float64)
    b = log_p_model.ravel().astype(np.float64)
    a = a - _logsumexp(a)
    b = b - _logsumexp(b)
    pa = np.exp(a)
    mask = pa > 0
    return float(np.sum(pa[mask] * (a[mask] - b[mask])))


MODE_REGION_STDS = 4.0   # a mixture component's region: the cells within this many (Mahalanobis) stds of its centre


def component_distances(points: np.ndarray, centers: np.ndarray, std: Optional[float],
                        covariances: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, K) distances of the points to the K components in units of their stds: Euclidean over `std`,
    or Mahalanobis where the components have covariances."""
    r = np.asarray(points, np.float64)[:, None, :] - np.asarray(centers, np.float64)[None]
    if covariances is None:
        return np.sqrt(np.sum(r ** 2, axis=-1)) / std
    return np.sqrt(np.einsum("nki,kij,nkj->nk", r, np.linalg.inv(covariances), r))


def mode_regions(points: np.ndarray, centers: np.ndarray, std: Optional[float],
                 covariances: Optional[np.ndarray] = None) -> np.ndarray:
    """(N,) region of each point: the index of its nearest component (Mahalanobis distance where the
    components have covariances) if within MODE_REGION_STDS of it, else -1 (the background)."""
    d = component_distances(points, centers, std, covariances)
    return np.where(np.min(d, axis=1) < MODE_REGION_STDS, np.argmin(d, axis=1), -1)


def kl_split_by_region(log_p_data: np.ndarray, log_p_model: np.ndarray, regions: np.ndarray):
    """KL(P_data || P_model) on the grid split by the chain rule over a partition of its cells into
    regions 0, 1, ... (the components, from mode_regions) and -1 (the rest): returns
    (off, among, within), which add up to the KL:
      off    = KL between the two-cell distributions (mass on the regions >= 0, mass on -1): the model's
               mass off the components;
      among  = P(on) KL(P(.|on) || Q(.|on)) over the regions >= 0: how wrong its mass per component is;
      within = sum over every region A of P(A) KL(P(.|A) || Q(.|A)): how wrong its shape within them is."""
    a = log_p_data.ravel().astype(np.float64)
    b = log_p_model.ravel().astype(np.float64)
    a, b = a - _logsumexp(a), b - _logsumexp(b)
    regions = np.asarray(regions).ravel()
    log_p, log_q, within = {}, {}, 0.0
    for region in np.unique(regions):
        cells = regions == region
        log_q[region] = _logsumexp(b[cells])
        cells &= np.isfinite(a)
        if not np.any(cells):
            continue
        log_p[region] = _logsumexp(a[cells])
        within += float(np.sum(np.exp(a[cells]) * ((a[cells] - log_p[region]) - (b[cells] - log_q[region]))))
    on = [r for r in log_p if r >= 0]
    log_p_on = _logsumexp(np.array([log_p[r] for r in on])) if on else -np.inf
    log_q_on = _logsumexp(np.array([log_q[r] for r in log_q if r >= 0])) if on else -np.inf
    off = float(np.exp(log_p_on) * (log_p_on - log_q_on)) if on else 0.0
    if -1 in log_p:
        off += float(np.exp(log_p[-1]) * (log_p[-1] - log_q[-1]))
    among = float(sum(np.exp(log_p[r]) * ((log_p[r] - log_p_on) - (log_q[r] - log_q_on)) for r in on))
    return off, among, within


def metric_grid(extent: float, size: int, grid_extent: float = 0.0):
    """(half-width R, points per side n) of the metric grid: R about grid_extent (0: 2 x extent), at the
    cell size of the picture's grid (2 extent / size) and with the picture's cells among its own, i.e.
    n = size + 2m whole cells."""
    r = max(float(grid_extent) or 2.0 * float(extent), float(extent))
    m = int(round((size * r / float(extent) - size) / 2.0))
    n = size + 2 * m
    return float(extent) * n / size, n


def histogram_log_density(sample_fn: Callable, extent: float, size: int, num_samples: int = 2_000_000,
                          seed: int = 0) -> np.ndarray:
    """(size, size) log cell masses of `num_samples` fresh draws binned on the evaluation grid (rows = y),
    -inf for empty cells: p_data for KL where a toy has no closed-form density (swiss roll, two spirals,
    four spin). The Monte Carlo error is about (occupied cells) / (2 num_samples) nats of KL."""
    x = sample_fn(np.random.default_rng([seed, 4242]), int(num_samples))
    edges = np.linspace(-extent, extent, size + 1)
    counts, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=[edges, edges])
    with np.errstate(divide="ignore"):
        return np.log(counts / max(1, counts.sum()))


KDE_BANDWIDTHS = (0.005, 0.01, 0.02, 0.04, 0.08)   # in units of the data's extent (2 on the toys)


def kde_kl(log_p_data: np.ndarray, samples: np.ndarray, extent: float, scale: float,
           bandwidths=KDE_BANDWIDTHS) -> float:
    """KL(p_data || a Gaussian KDE of `samples`), min over the bandwidths scale x `bandwidths`, on the
    grid of log_p_data ((n, n) over [-extent, extent]^2, rows = y; samples outside it or not finite are
    dropped). The KDE is binned: the samples' histogram on the grid blurred by the kernel, which is
    exact up to moving each sample to its cell's centre. Taking the best bandwidth against p_data itself
    is an oracle choice, applied alike to a sampler and to data draws; a floor of 1e-9 of the mass,
    spread uniformly, keeps cells without samples finite."""
    from scipy.ndimage import gaussian_filter
    n = log_p_data.shape[0]
    edges = np.linspace(-extent, extent, n + 1)
    x = np.asarray(samples, np.float64)
    counts, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=[edges, edges])
    cell = 2.0 * extent / n
    best = np.inf
    for h in bandwidths:
        q = gaussian_filter(counts, sigma=h * scale / cell, mode="constant", truncate=4.0)
        q = np.maximum(q, 0.0) / max(q.sum(), 1e-300) * (1.0 - 1e-9) + 1e-9 / q.size
        best = min(best, kl_on_grid(log_p_data, np.log(q)))
    return float(best)


def mode_metrics(samples: np.ndarray, centers: np.ndarray, std: Optional[float], min_count: int,
                 covariances: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Each sample goes to its nearest centre (in Mahalanobis distance when the components have
    covariances) and is high quality within 3 standard deviations of it; a mode is covered with
    `min_count` high-quality samples. With `weights`, mode_frequency_kl = KL(data weights || the
    high-quality samples' mode frequencies, add-one smoothed), in nats."""
    d = component_distances(samples, centers, std, covariances)
    nearest, dist = np.argmin(d, axis=1), np.min(d, axis=1)
    high_quality = dist < 3.0
    counts = np.bincount(nearest[high_quality], minlength=len(centers))
    out = {"modes_covered": int(np.sum(counts >= max(1, min_count))),
           "num_modes": int(len(centers)),
           "high_quality_fraction": float(np.mean(high_quality))}
    if weights is not None:
        freq = (counts + 1.0) / (counts.sum() + len(centers))
        out["mode_frequency_kl"] = float(np.sum(weights * np.log(weights / freq)))
    return out


def evaluate_2d(energy_fn: Callable, dataset, eval_config, temperature: float = 1.0,
                samples: Optional[Dict[str, np.ndarray]] = None):
    """Metrics dict and the picture's grid log density (normalised over the picture's square) for a
    model of a 2-D dataset.

    samples: optional {'generator': (n, 2), 'mcmc': (n, 2)} arrays to score against the mixture modes.
    """
    extent, size = float(dataset.extent), int(eval_config.grid_size)
    r, n = metric_grid(extent, size, float(eval_config.get("grid_extent", 0.0)))
    _, pts, area = grid_points(r, n)
    grid_energy = batched(energy_fn, pts)   # once: the density at T = 1 and at the fitted T both use it
    log_p_big, log_z = normalised_on_grid(grid_energy, area, 1.0 / temperature)
    inside = (np.abs(pts[:, 0]) < extent) & (np.abs(pts[:, 1]) < extent)
    edge = (np.abs(pts[:, 0]) > 0.9 * r) | (np.abs(pts[:, 1]) > 0.9 * r)
    mass = np.exp(log_p_big.ravel() - _logsumexp(log_p_big.ravel()))
    test_energy = float(np.mean(batched(energy_fn, dataset.test)))
    metrics = {"temperature": float(temperature), "log_partition": log_z,
               "test_nll": test_energy / temperature + log_z,
               "density/mass_outside_square": float(np.sum(mass[~inside])),
               "density/mass_at_grid_edge": float(np.sum(mass[edge]))}
    # The energy's scale fitted by maximum likelihood on training points (never the held-out split or
    # the exact density): the density exp(-E/T_fit)/Z, reported beside T = 1, separates an energy
    # whose wells are in the right places but too shallow or too deep from one whose wells are wrong.
    beta = fit_inverse_temperature(grid_energy, batched(energy_fn, dataset.train[:FIT_TEMPERATURE_POINTS]))
    log_p_fit, log_z_fit = normalised_on_grid(grid_energy, area, beta)
    metrics["fitted/inverse_temperature"] = beta
    metrics["fitted/test_nll"] = beta * test_energy + log_z_fit
    toy = dataset.toy
    if toy is not None:
        exact = toy.log_density is not None
        log_p_data = toy.log_density(pts).reshape(n, n) if exact else histogram_log_density(toy.sample, r, n)
        metrics["kl_data_model"] = kl_on_grid(log_p_data, log_p_big)
        metrics["fitted/kl_data_model"] = kl_on_grid(log_p_data, log_p_fit)
        if temperature != 1.0:   # the energy's own density exp(-E)/Z beside the reported exp(-E/T)/Z_T
            metrics["t1/kl_data_model"] = kl_on_grid(log_p_data, normalised_on_grid(grid_energy, area)[0])
        if toy.centers is not None:   # a mixture: the KL split into mass off, among and within the components
            regions = mode_regions(pts, toy.centers, toy.std, toy.covariances)
            for prefix, log_q in (("", log_p_big), ("fitted/", log_p_fit)):
                split = kl_split_by_region(log_p_data, log_q, regions)
                for name, value in zip(("kl_off_modes", "kl_among_modes", "kl_within_modes"), split):
                    metrics[prefix + name] = value
        if exact and np.all(np.isfinite(log_p_data)):
            metrics["kl_model_data"] = kl_on_grid(log_p_big, log_p_data)
        kinds = [k for k in ("generator", "mcmc") if k in (samples or {})]
        for kind in kinds:
            metrics[f"{kind}/kl_data_kde"] = kde_kl(log_p_data, samples[kind], r, extent)
        if kinds:   # the same KDE of as many fresh data draws: the floor the sampler's figure is read against
            draws = toy.sample(np.random.default_rng([len(samples[kinds[0]]), 5353]), len(samples[kinds[0]]))
            metrics["data/kl_data_kde"] = kde_kl(log_p_data, draws, r, extent)
    if toy is not None and toy.centers is not None:
        for kind, x in (samples or {}).items():
            for k, v in mode_metrics(np.asarray(x), toy.centers, toy.std, eval_config.mode_min_count,
                                     toy.covariances, toy.weights).items():
                metrics[f"{kind}/{k}"] = v
    # the picture: the square's cells of the metric grid, renormalised over the square
    lo = (n - size) // 2
    log_p = log_p_big[lo:lo + size, lo:lo + size]
    log_p = log_p - _logsumexp(log_p.ravel()) - np.log((2.0 * extent / size) ** 2)
    return metrics, log_p


PANEL_TITLES = {"test": "held-out data", "reconstruction": "reconstructions g(mu(x))"}


def plot_2d(dataset, log_p: np.ndarray, samples: Dict[str, np.ndarray], title: str = "") -> bytes:
    """PNG bytes: data | learned density exp(-E)/Z | density with generator and MCMC samples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extent = float(dataset.extent)
    box = [-extent, extent, -extent, extent]
    panels = 2 + len(samples)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4.2))
    data = dataset.test[:2500]
    axes[0].scatter(data[:, 0], data[:, 1], s=1, c="k")
    axes[0].set_title("data (held out)")
    axes[1].imshow(np.exp(log_p), origin="lower", extent=box, cmap="viridis")
    axes[1].set_title("density exp(-E)/Z")
    colors = {"generator": "r", "mcmc": "w", "reconstruction": "orange"}
    for ax, (kind, x) in zip(axes[2:], samples.items()):
        ax.imshow(np.exp(log_p), origin="lower", extent=box, cmap="viridis")
        x = np.asarray(x)
        ax.scatter(x[:, 0], x[:, 1], s=1, c=colors.get(kind, "r"))
        ax.set_title(PANEL_TITLES.get(kind, f"{kind} samples"))
    for ax in axes:
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def plot_samples_2d(x: np.ndarray, extent: Optional[float], title: str = "") -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x[:, 0], x[:, 1], s=1, c="k")
    if extent:
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")   # the whole title, however long
    plt.close(fig)
    return buf.getvalue()


def png_to_array(png: bytes) -> np.ndarray:
    """(H, W, 3) uint8 image for TensorBoard."""
    import matplotlib.image as mpimg
    img = mpimg.imread(io.BytesIO(png), format="png")
    return (img[..., :3] * 255).astype(np.uint8)


def write_atomic(path: str, data: bytes) -> None:
    """Writes via a temporary name and a rename, so a crash never leaves a half-written file."""
    if "://" in str(path):  # an object store (gs://): an object appears whole or not at all
        from etils import epath
        epath.Path(path).write_bytes(data)
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def image_grid_png(samples: Dict[str, np.ndarray], title: str = "", max_images: int = 64,
                   cols: Optional[int] = None) -> bytes:
    """PNG of image samples in [-1, 1] (N, H, W, C), one grid per kind (generator, mcmc); `cols`
    images per row (default: a square grid)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(samples), figsize=(5 * len(samples), 5.3), squeeze=False)
    for ax, (kind, x) in zip(axes[0], samples.items()):
        x = np.clip((np.asarray(x[:max_images]) + 1.0) / 2.0, 0.0, 1.0)
        n, h, w, c = x.shape
        ncol = int(cols or np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / ncol))
        grid = np.ones((rows * (h + 1) + 1, ncol * (w + 1) + 1, c), np.float32)
        for i in range(n):
            r, q = divmod(i, ncol)
            grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
        ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
        ax.set_title(kind if cols else PANEL_TITLES.get(kind, f"{kind} samples"))
        ax.axis("off")
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
