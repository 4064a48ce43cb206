"""Evaluation of a whole model: what training reports at its evaluation steps, --mode=eval writes and
the Python API computes. Every metric is chosen by the data and the config, never by the method:
2-D densities and modes (toy2d), image metrics (image_metrics), anomaly and OOD detection (anomaly),
the generator's capacity usage C_z, method-specific extras (e.g. the triangle's reconstruction RMSE).

  evaluate_model(method, params, dataset, config, key) -> (metrics, png, samples)
  evaluate_replicas(method, params, dataset, config, step, replicas) -> (metrics, png)
      every replica of a multi-seed state; the aggregate of aggregate_seeds for S > 1
"""
import json
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax import parallel
from ebm_jax.data import DataError, images
from ebm_jax.errors import check_positive
from ebm_jax.estimators import singular_values
from ebm_jax.evaluation import anomaly, image_metrics, toy2d
from ebm_jax.state import seed_replica


def compiled(method):
    """The method's evaluation functions, jitted once per method object with the parameters as an
    ARGUMENT: a closure over them would bake them into the program as constants (a 2.9M-parameter
    energy put 23.5 MB of them in the HLO) and recompile at every evaluation. `traces` counts how often
    each was traced (tests check it stays 1 across evaluations)."""
    fns = method.__dict__.get("_compiled_eval")
    if fns is not None:
        return fns
    traces = {}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            traces[name] = traces.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    def anisotropy(params, z):
        return jnp.mean(jax.vmap(lambda zz: singular_values.anisotropy_index(
            lambda q: method.generate(params, q[None])[0], zz))(z))

    fns = {"traces": traces,
           "energy": jax.jit(counted("energy", method.energy)),
           "sample": jax.jit(counted("sample", method.sample), static_argnums=(2, 3),
                             static_argnames=("space", "include_prior")),
           "anomaly_score": jax.jit(counted("anomaly_score", method.anomaly_score), static_argnames=("kind",)),
           "anisotropy": jax.jit(counted("anisotropy", anisotropy))}
    if hasattr(method, "reconstruct"):
        fns["reconstruct"] = jax.jit(counted("reconstruct", method.reconstruct))
    method.__dict__["_compiled_eval"] = fns
    return fns


def evaluate_model(method, params, dataset, config, key, picture: bool = True, title_suffix: str = ""):
    """Metrics dict and a PNG (2-D data: density and samples; images: a grid of samples).

    params: method.inference_params(state). picture=False skips drawing the PNG (None instead): the
    processes other than 0 of a multi-process run compute the metrics but write nothing."""
    fns = compiled(method)
    energy_fn = lambda x: fns["energy"](params, x)  # noqa: E731
    n = int(config.eval.num_samples)
    k_gen, k_mcmc = jax.random.split(key)
    samples = {}
    if method.has_generator:
        samples["generator"] = np.asarray(fns["sample"](params, k_gen, n)[0])
    if hasattr(method, "reconstruct"):  # methods with an inference model: held-out data and g(mu(x))
        held_out = dataset.test[:n]
        if len(dataset.shape) == 3:
            samples["test"] = held_out
        samples["reconstruction"] = np.asarray(fns["reconstruct"](params, held_out))
    # the held-out set is split over the processes and the per-example energies gathered, so that
    # every process reports the same metrics, computed over all of it
    test_energy = parallel.map_rows(lambda x: toy2d.batched(energy_fn, x), dataset.test)
    metrics: Dict[str, Any] = {"test_energy": float(np.mean(test_energy))}
    log_z = method.log_partition(params)
    if log_z is not None:
        # exact: log p(x) = -E(x) - log Z (SteinGAN Sec. 5.1's RBM); per example, in nats
        metrics["log_partition_exact"] = float(log_z)
        metrics["test_log_likelihood"] = float(-np.mean(test_energy) - float(log_z))
    s = config.sampling
    if (config.eval.mcmc or not method.has_generator) and s.mcmc_steps > 0:
        x, rate = fns["sample"](params, k_mcmc, n, int(s.mcmc_steps), float(s.step_size), space=s.space,
                                temperature=float(s.temperature), include_prior=bool(s.include_prior))
        samples["mcmc"] = np.asarray(x)
        metrics["mcmc/acceptance_rate"] = float(rate)
    metrics.update(method.extra_metrics(params, dataset, config))   # methods compile theirs once too
    if config.eval.get("ood_data_dir", ""):
        metrics.update(ood_evaluation(method, params, dataset, config))
    if dataset.test_labels is not None:
        metrics.update(anomaly_evaluation(method, params, dataset))
    # image data: classifier Fréchet distance, StackedMNIST modes, IS / FID, as config.eval asks
    metrics.update(image_metrics.evaluate_image_samples(
        samples, dataset, config.eval, key=jax.random.fold_in(key, 11),
        generate=(lambda k, m: fns["sample"](params, k, m)[0]) if method.has_generator else None))
    if method.has_generator:
        # capacity usage C_z (EBM-BB Eq. 21), comparable across every method with a generator
        z = method.prior(jax.random.fold_in(key, 7), min(n, 256))
        metrics["generator/anisotropy"] = float(fns["anisotropy"](params, z))
    png = None
    if len(dataset.shape) == 3 and picture:
        png = toy2d.image_grid_png(samples, f"{method.name} on {dataset.name}{title_suffix}")
    if dataset.is_2d and dataset.extent:
        # the density the model reports is the one MCMC samples: exp(-E/T)/Z at T = sampling.temperature
        t = float(config.sampling.temperature)
        m, log_p = toy2d.evaluate_2d(energy_fn, dataset, config.eval, t, samples)
        metrics.update(m)
        title = f"{method.name} on {dataset.name}{title_suffix}"
        if "kl_data_model" in m:
            title += f"  KL(data||model)={m['kl_data_model']:.3f}" + (f" at T={t:.3g}" if t != 1.0 else "")
        if picture:
            png = toy2d.plot_2d(dataset, log_p, samples, title)
    return metrics, png, samples


def ood_evaluation_data(config, dataset):
    """The test split in config.eval.ood_data_dir, checked against the model's data shape."""
    check_positive(config, "eval.num_ood", integer=True)
    ood = images.load_idx_split(str(config.eval.ood_data_dir), "test", field="eval.ood_data_dir")
    if ood.shape[1:] != dataset.shape:
        raise DataError(f"eval.ood_data_dir holds images of shape {ood.shape[1:]}, but the model's data have shape "
                        f"{dataset.shape}; give an out-of-distribution set of the same shape.")
    return ood


def ood_evaluation(method, params, dataset, config):
    """AUROC / AUPRC / FPR80 of telling config.eval.ood_data_dir's test images (positives) from the
    model's own test split, scored by the energy and by the score norm ||grad_x E(x)||."""
    ood = ood_evaluation_data(config, dataset)
    n = int(config.eval.num_ood)
    out = {}
    for kind in ("energy", "score_norm"):
        score = lambda x, kind=kind: compiled(method)["anomaly_score"](params, x, kind=kind)  # noqa: E731
        s_in = parallel.map_rows(lambda x: toy2d.batched(score, x, chunk=1000), dataset.test[:n])
        s_out = parallel.map_rows(lambda x: toy2d.batched(score, x, chunk=1000), ood[:n])
        out.update(anomaly.ood_metrics(s_in, s_out, f"ood_{kind}"))
    return out


def anomaly_evaluation(method, params, dataset):
    """Anomaly detection on a test split with labels (1 = anomaly; MNIST with a held-out digit, KDD99),
    scored by the energy and by the score norm ||grad_x E(x)|| as MEG Sec. 4.4 does: AUPRC (MEG Table 4,
    by the trapezoid rule as its code computes it) and average precision, AUROC, and precision / recall / F1 when the highest-scoring `flagged_fraction` of the test rows is
    flagged (MEG Table 3's KDD protocol; the anomalies' own share when the dataset sets none)."""
    labels = np.asarray(dataset.test_labels)
    fraction = dataset.flagged_fraction or float(np.mean(labels))
    out = {}
    for kind in ("energy", "score_norm"):
        score = lambda x, kind=kind: compiled(method)["anomaly_score"](params, x, kind=kind)  # noqa: E731
        s = parallel.map_rows(lambda x: toy2d.batched(score, x, chunk=1000), dataset.test)
        normal, anomalous = s[labels == 0], s[labels == 1]
        p, r, f1 = anomaly.precision_recall_f1(s, labels, fraction)
        out.update({f"anomaly_{kind}/auprc_trapezoid": anomaly.auprc_trapezoid(normal, anomalous),
                    f"anomaly_{kind}/average_precision": anomaly.average_precision(normal, anomalous),
                    f"anomaly_{kind}/auroc": anomaly.auroc(normal, anomalous),
                    f"anomaly_{kind}/precision": p, f"anomaly_{kind}/recall": r, f"anomaly_{kind}/f1": f1})
    return out


def eval_key(config, step, replica: int = 0):
    """The evaluation rng of a step: replica i of a multi-seed run draws what the run of train.seed + i does."""
    return jax.random.fold_in(jax.random.PRNGKey(int(config.train.seed) + replica + 1), int(step))


def aggregate_seeds(per_seed):
    """Metrics of S replicas: the mean of each at the top level (so readers of one run's metrics keep
    working), their population std under 'std' and every replica's value under 'per_seed'."""
    keys = sorted(per_seed[0])
    out = {k: float(np.mean([m[k] for m in per_seed])) for k in keys}
    out["std"] = {k: float(np.std([m[k] for m in per_seed])) for k in keys}
    out["per_seed"] = [dict(m) for m in per_seed]
    out["num_seeds"] = len(per_seed)
    return out


def evaluate_replicas(method, params, dataset, config, step, replicas: int = 1):
    """(metrics, picture) of every replica's parameters: evaluate_model's for one; for S > 1 the
    aggregate_seeds record (means, std, per seed) and the picture of replica 0."""
    if replicas == 1:
        metrics, png, _ = evaluate_model(method, params, dataset, config, eval_key(config, step),
                                         picture=jax.process_index() == 0)
        return metrics, png
    per_seed, png = [], None
    for i in range(replicas):
        m, p, _ = evaluate_model(method, seed_replica(params, i), dataset, config, eval_key(config, step, i),
                                 picture=jax.process_index() == 0 and i == 0,
                                 title_suffix=f"  (seed {int(config.train.seed)}, 1 of {replicas} replicas)")
        per_seed.append(m)
        png = p if i == 0 else png
    return aggregate_seeds(per_seed), png


def write_eval_scalars(writer, metrics, step):
    """eval/<metric> (the mean over replicas), eval_std/<metric> and eval_seed<i>/<metric> for S > 1."""
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and k != "num_seeds":
            writer.add_scalar(f"eval/{k}", v, step)
    for k, v in metrics.get("std", {}).items():
        writer.add_scalar(f"eval_std/{k}", v, step)
    for i, m in enumerate(metrics.get("per_seed", [])):
        for k, v in m.items():
            writer.add_scalar(f"eval_seed{i}/{k}", v, step)


def format_metrics(metrics) -> str:
    """One line of sorted `name=value` pairs, `name=mean+-std` for a multi-seed record."""
    std = metrics.get("std", {})
    parts = []
    for k, v in sorted(metrics.items()):
        if k in ("std", "per_seed"):
            continue
        if k in std:
            parts.append(f"{k}={v:.4g}+-{std[k]:.2g}")
        else:
            parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def write_json_atomic(path, obj):
    toy2d.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def make_writer(workdir):
    """The TensorBoard writer of workdir/tensorboard on process 0 (None elsewhere); tensorboardX writes
    event files without TensorFlow."""
    if jax.process_index() != 0:
        return None
    import os
    from tensorboardX import SummaryWriter
    return SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
