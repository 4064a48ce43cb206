"""train_and_evaluate(config, workdir): the one training loop every method shares.

The loop knows nothing of the method: it asks the registry for one, then only calls its init,
train_step, energy, generate and sample. One iteration of a method (all its inner updates) is one
jit-compiled call with the state donated; the rng of iteration s is fold_in(key, s) and its data batch
is a function of s alone, so a resumed run reproduces an uninterrupted one exactly.
"""
import io
import json
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax import checkpointing, configlib, evaluation, parallel
from ebm_jax.data import get_dataset
from ebm_jax.estimators import singular_values
from ebm_jax.methods import get_method
from ebm_jax.methods.base import ConfigError


def _say(msg: str) -> None:
    """Progress messages for the user, from process 0 only (absl logging is left to libraries)."""
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite."""


def init_full_state(method, key):
    """The method's state plus the loop's own entries: the step, and the first step whose loss was
    non-finite (-1 while none was)."""
    return {"step": jnp.zeros((), jnp.int32), "bad_step": jnp.full((), -1, jnp.int32), **method.init(key, None)}


class Trainer:
    """Compiled iteration, state initialisation and batching for one config and dataset."""

    def __init__(self, config, dataset=None):
        configlib.validate(config)
        self.config = config
        self.dataset = dataset if dataset is not None else get_dataset(config.data)
        self.method = get_method(config, self.dataset.shape)
        if config.eval.get("ood_data_dir", ""):
            # fail before training, not at the final evaluation, when the OOD set is missing or of another shape
            ood_evaluation_data(config, self.dataset)
        self.mesh = parallel.make_mesh()
        self.num_devices = self.mesh.devices.size
        self.batch_size = int(config.data.batch_size)
        if self.batch_size % self.num_devices:
            raise ConfigError(
                f"config.data.batch_size={self.batch_size} does not split over {self.num_devices} devices; "
                f"use a multiple of {self.num_devices}.")
        self.replicated = parallel.replicated(self.mesh)
        self.batch_sharding = parallel.batch_sharding(self.mesh, batch_axis=1)
        self.base_key = jax.random.PRNGKey(int(config.train.seed))
        # traces of the one-step and the several-step program: each must stay at most 1 (no retracing)
        self.traces = {"single": 0, "multi": 0}
        self.iteration = jax.jit(
            self._iteration, donate_argnums=0,
            in_shardings=(self.replicated, self.batch_sharding, self.replicated),
            out_shardings=(self.replicated, self.replicated))
        # train.steps_per_call = K > 1: K iterations per dispatch, a lax.scan over K batches (tiny models
        # spend most of an iteration in Python dispatch otherwise); the same numbers as K single calls
        self.steps_per_call = int(config.train.get("steps_per_call", 1))
        self.multi_batch_sharding = parallel.batch_sharding(self.mesh, batch_axis=2)
        self.iterations = jax.jit(
            self._iterations, donate_argnums=0,
            in_shardings=(self.replicated, self.multi_batch_sharding, self.replicated),
            out_shardings=(self.replicated, self.replicated))

    @property
    def num_traces(self) -> int:
        return self.traces["single"] + self.traces["multi"]

    # -- state --
    def _init_state(self, key):
        return init_full_state(self.method, key)

    def init_state(self):
        key = jax.random.fold_in(self.base_key, 0x1417)  # init key, distinct from every step key
        return jax.jit(self._init_state, out_shardings=self.replicated)(key)

    def abstract_state(self):
        shapes = jax.eval_shape(self._init_state, self.base_key)
        return jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    # -- one iteration --
    def _iteration(self, state, batch, base_key):
        self.traces["single"] += 1
        return self._step(state, batch, base_key)

    def _iterations(self, state, batches, base_key):
        """len(batches) iterations in one program; metrics come back stacked, (K,) per entry."""
        self.traces["multi"] += 1
        return jax.lax.scan(lambda st, b: self._step(st, b, base_key), state, batches)

    def _step(self, state, batch, base_key):
        key = jax.random.fold_in(base_key, state["step"])
        inner = {k: v for k, v in state.items() if k not in ("step", "bad_step")}
        new_inner, metrics = self.method.train_step(inner, batch, key)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(metrics)]))
        ok = finite & (state["bad_step"] < 0)
        # A non-finite loss freezes the state at its last good value and records the step; the host
        # notices at the next log or checkpoint and stops without saving anything from that step on.
        # (one conditional over the whole state, not a select per leaf: ~70 fewer ops per iteration on
        # the EBM-BB toys, whose iterations are made of thousands of tiny ones on a CPU)
        kept = jax.lax.cond(ok, lambda: new_inner, lambda: inner)
        bad_step = jnp.where(ok | (state["bad_step"] >= 0), state["bad_step"], state["step"])
        return {"step": state["step"] + ok.astype(jnp.int32), "bad_step": bad_step, **kept}, metrics

    def batch(self, step: int):
        """The global batch of iteration `step`. Its examples are a function of (data seed, step) alone,
        whatever the number of processes; each process reads only its even share of the rows."""
        local = self.dataset.batch(step, self.batch_size, self.method.batches_per_step,
                                   rows=parallel.process_rows(self.batch_size))
        return parallel.global_batch(local, self.batch_sharding)

    def batches(self, step: int, k: int):
        """The global batches of iterations step .. step + k - 1, stacked on a leading axis."""
        rows = parallel.process_rows(self.batch_size)
        local = np.stack([self.dataset.batch(s, self.batch_size, self.method.batches_per_step, rows=rows)
                          for s in range(step, step + k)])
        return parallel.global_batch(local, self.multi_batch_sharding)

    def chunk(self, step: int, end: int) -> int:
        """How many iterations the next call runs from `step`: steps_per_call when they all fit before
        `end` and before the next log, checkpoint or evaluation step (the host acts only between
        calls), else 1. With those periods multiples of steps_per_call only the K-step program runs."""
        k = self.steps_per_call
        if k <= 1 or step + k > end:
            return 1
        t = self.config.train
        for period in (t.log_every, t.checkpoint_every, t.eval_every):
            if period and (step + k - 1) // period != step // period:
                return 1
        return k

    def run(self, state, step: int, end: int):
        """One call from `step`: (state, metrics, number of iterations run)."""
        k = self.chunk(step, end)
        if k == 1:
            state, metrics = self.iteration(state, self.batch(step), self.base_key)
        else:
            state, metrics = self.iterations(state, self.batches(step, k), self.base_key)
        return state, metrics, k


# ---------------------------------------------------------------------------------------------
# Evaluation shared by training, --mode=eval and ebm_jax.load
# ---------------------------------------------------------------------------------------------

def evaluate_model(method, params, dataset, config, key, picture: bool = True):
    """Metrics dict and a PNG (2-D data: density and samples; images: a grid of samples).

    params: method.inference_params(state). picture=False skips drawing the PNG (None instead): the
    processes other than 0 of a multi-process run compute the metrics but write nothing."""
    energy_fn = jax.jit(lambda x: method.energy(params, x))
    n = int(config.eval.num_samples)
    k_gen, k_mcmc = jax.random.split(key)
    samples = {}
    if method.has_generator:
        samples["generator"] = np.asarray(method.sample(params, k_gen, n)[0])
    if hasattr(method, "reconstruct"):  # methods with an inference model: held-out data and g(mu(x))
        held_out = dataset.test[:n]
        if len(dataset.shape) == 3:
            samples["test"] = held_out
        samples["reconstruction"] = np.asarray(jax.jit(method.reconstruct)(params, held_out))
    # the held-out set is split over the processes and the per-example energies gathered, so that
    # every process reports the same metrics, computed over all of it
    test_energy = parallel.map_rows(lambda x: evaluation.toy2d.batched(energy_fn, x), dataset.test)
    metrics: Dict[str, Any] = {"test_energy": float(np.mean(test_energy))}
    log_z = method.log_partition(params)
    if log_z is not None:
        # exact: log p(x) = -E(x) - log Z (SteinGAN Sec. 5.1's RBM); per example, in nats
        metrics["log_partition_exact"] = float(log_z)
        metrics["test_log_likelihood"] = float(-np.mean(test_energy) - float(log_z))
    s = config.sampling
    if (config.eval.mcmc or not method.has_generator) and s.mcmc_steps > 0:
        x, rate = jax.jit(lambda k: method.sample(params, k, n, s.mcmc_steps, s.step_size, s.space,
                                                  s.temperature, s.include_prior))(k_mcmc)
        samples["mcmc"] = np.asarray(x)
        metrics["mcmc/acceptance_rate"] = float(rate)
    metrics.update(method.extra_metrics(params, dataset, config))
    if config.eval.get("ood_data_dir", ""):
        metrics.update(ood_evaluation(method, params, dataset, config))
    if dataset.test_labels is not None:
        metrics.update(anomaly_evaluation(method, params, dataset))
    # image data: classifier Fréchet distance, StackedMNIST modes, IS / FID, as config.eval asks
    metrics.update(evaluation.image_metrics.evaluate_image_samples(
        samples, dataset, config.eval, key=jax.random.fold_in(key, 11),
        generate=(lambda k, m: method.sample(params, k, m)[0]) if method.has_generator else None))
    if method.has_generator:
        # capacity usage C_z (EBM-BB Eq. 21), comparable across every method with a generator
        z = method.prior(jax.random.fold_in(key, 7), min(n, 256))
        metrics["generator/anisotropy"] = float(jnp.mean(jax.jit(jax.vmap(
            lambda zz: singular_values.anisotropy_index(lambda q: method.generate(params, q[None])[0], zz)))(z)))
    png = None
    if len(dataset.shape) == 3 and picture:
        png = evaluation.image_grid_png(samples, f"{method.name} on {dataset.name}")
    if dataset.is_2d and dataset.extent:
        m, log_p = evaluation.evaluate_2d(energy_fn, dataset, config.eval, 1.0, samples)
        metrics.update(m)
        title = f"{method.name} on {dataset.name}"
        if "kl_data_model" in m:
            title += f"  KL(data||model)={m['kl_data_model']:.3f}"
        if picture:
            png = evaluation.plot_2d(dataset, log_p, samples, title)
    return metrics, png, samples


def ood_evaluation_data(config, dataset):
    """The test split in config.eval.ood_data_dir, checked against the model's data shape."""
    from ebm_jax.data import DataError, images
    from ebm_jax.methods.base import check_positive
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
        score = jax.jit(lambda x: method.anomaly_score(params, x, kind))
        s_in = parallel.map_rows(lambda x: evaluation.toy2d.batched(score, x, chunk=1000), dataset.test[:n])
        s_out = parallel.map_rows(lambda x: evaluation.toy2d.batched(score, x, chunk=1000), ood[:n])
        out.update(evaluation.anomaly.ood_metrics(s_in, s_out, f"ood_{kind}"))
    return out


def anomaly_evaluation(method, params, dataset):
    """Anomaly detection on a test split with labels (1 = anomaly; MNIST with a held-out digit, KDD99),
    scored by the energy and by the score norm ||grad_x E(x)|| as MEG Sec. 4.4 does: AUPRC (MEG Table 4),
    AUROC, and precision / recall / F1 when the highest-scoring `flagged_fraction` of the test rows is
    flagged (MEG Table 3's KDD protocol; the anomalies' own share when the dataset sets none)."""
    labels = np.asarray(dataset.test_labels)
    fraction = dataset.flagged_fraction or float(np.mean(labels))
    out = {}
    for kind in ("energy", "score_norm"):
        score = jax.jit(lambda x: method.anomaly_score(params, x, kind))
        s = parallel.map_rows(lambda x: evaluation.toy2d.batched(score, x, chunk=1000), dataset.test)
        normal, anomalous = s[labels == 0], s[labels == 1]
        p, r, f1 = evaluation.anomaly.precision_recall_f1(s, labels, fraction)
        out.update({f"anomaly_{kind}/auprc": evaluation.anomaly.auprc(normal, anomalous),
                    f"anomaly_{kind}/auroc": evaluation.anomaly.auroc(normal, anomalous),
                    f"anomaly_{kind}/precision": p, f"anomaly_{kind}/recall": r, f"anomaly_{kind}/f1": f1})
    return out


def _eval_key(config, step):
    return jax.random.fold_in(jax.random.PRNGKey(int(config.train.seed) + 1), int(step))


def write_json_atomic(path, obj):
    evaluation.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves at the current step and exits.

    coordinated (a multi-process run): JAX's preemption sync manager owns SIGTERM. It tells every
    process of a notice on any one of them, and they agree on one step to stop at (reached_preemption):
    all processes must write the same step of one checkpoint together. A Ctrl-C here is forwarded to
    this process as a SIGTERM so that it goes through the same agreement."""

    def __init__(self, coordinated: bool = False):
        self.signum = None
        self.coordinated = coordinated
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT,) if self.coordinated else (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.signum = signum
        if self.coordinated:
            os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class TrainingInterrupted(Exception):
    def __init__(self, signum, step):
        super().__init__(f"stopped by signal {signum} at step {step}; the checkpoint of step {step} was saved")
        self.signum, self.step = signum, step


def _make_writer(workdir):
    if jax.process_index() != 0:
        return None
    from tensorboardX import SummaryWriter  # writes event files without TensorFlow
    return SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))


def _progress(config, start, total):
    if jax.process_index() != 0 or not config.train.progress_bar:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, desc="train")


def _check_finite(state, manager, workdir):
    bad = int(jax.device_get(state["bad_step"]))
    if bad >= 0:
        last = manager.latest_step()
        kept = (f"the last good checkpoint (step {last}) in {checkpointing.checkpoint_dir(workdir)} is kept"
                if last is not None else "no checkpoint had been saved yet")
        raise NonFiniteLossError(f"the training loss became non-finite at step {bad}; {kept}; lower optim.lr "
                                 "or check the data for extreme values.")


def train_and_evaluate(config, workdir: str, dataset=None, stop_after: Optional[int] = None):
    """Trains config.method on config.data, resuming from the latest checkpoint in workdir.

    stop_after: end this run after that step with a checkpoint, as a preemption would (the learning-
    rate schedule still spans config.train.num_steps); the next call resumes from there.

    Returns the final state (on device). Raises ConfigError / DataError / CheckpointError /
    NonFiniteLossError with one sentence naming the problem, and TrainingInterrupted after a signal
    (the checkpoint of the current step is saved first).
    """
    trainer = Trainer(config, dataset)
    workdir = checkpointing.absolute(workdir)
    checkpointing.makedirs(workdir)
    manager = checkpointing.make_manager(workdir, int(config.train.max_to_keep))
    method, num_steps = trainer.method, int(config.train.num_steps)

    state = trainer.init_state()
    current_meta = checkpointing.make_meta(method, jax.eval_shape(lambda: state))
    latest = manager.latest_step()
    # Multi-process: every process counts steps with the preemption sync manager from the start (it
    # reports the last step it was given when a SIGTERM arrives, and the agreed stop is one past the
    # largest); give it the step we start from as early as possible.
    coordinated = parallel.preemption_service_active()
    preempted_at_start = coordinated and manager.reached_preemption(latest or 0)
    if latest is not None:
        saved = checkpointing.restore_json(manager, latest)
        checkpointing.check_meta(saved["meta"], current_meta, workdir)
        state = checkpointing.restore_state(manager, latest, trainer.abstract_state())
        _say(f"resumed from step {latest} in {workdir}")
    start = int(jax.device_get(state["step"]))
    if start > num_steps:
        raise ConfigError(f"{workdir} already holds step {start}, beyond config.train.num_steps={num_steps}; "
                          "raise train.num_steps or use another workdir.")

    end = num_steps if stop_after is None else min(num_steps, max(start, int(stop_after)))
    writer = _make_writer(workdir)
    bar = _progress(config, start, num_steps)
    pending, last_saved, t_log = [], latest, time.time()

    def save(step_now):
        nonlocal last_saved
        _check_finite(state, manager, workdir)
        if last_saved != step_now:
            checkpointing.save(manager, step_now, state, config, current_meta)
            last_saved = step_now

    written = []  # files of the final evaluation, named in the last message

    def run_eval(step_now, final=False):
        # host copies of the replicated parameters: every process evaluates on its own first device
        # (the held-out set split between the processes), not with arrays that span all processes
        params = jax.device_get(method.inference_params(state))
        metrics, png, _ = evaluate_model(method, params, trainer.dataset, config, _eval_key(config, step_now),
                                         picture=jax.process_index() == 0)
        if jax.process_index() != 0:
            return metrics
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"eval/{k}", v, step_now)
            if png is not None:
                writer.add_image("eval/density", evaluation.png_to_array(png), step_now, dataformats="HWC")
            writer.flush()
        if final:
            write_json_atomic(os.path.join(workdir, "eval_final.json"), {"step": step_now, **metrics})
            written.append(os.path.join(workdir, "eval_final.json"))
            if png is not None:
                picture = "density.png" if trainer.dataset.is_2d else "samples.png"
                evaluation.write_atomic(os.path.join(workdir, picture), png)
                written.append(os.path.join(workdir, picture))
        return metrics

    def stop_requested(first, last):
        """After a call that ran iterations first..last: was a stop asked for?"""
        if coordinated:
            # JAX's sync manager agrees on one step (one past the furthest any process reported) and
            # answers True at exactly that step: every step of the call is reported, in order, so that
            # a call of several iterations cannot jump over it. Every process runs the same calls.
            return any(manager.reached_preemption(s) for s in range(first, last + 1))
        return stop.signum is not None

    try:
        with _StopFlag(coordinated) as stop:
            if preempted_at_start:  # a SIGTERM before the loop began: the sync point is the first step
                save(start)
                raise TrainingInterrupted(signal.SIGTERM, start)
            step, pending_steps = start, 0
            while step < end:
                # metrics stay on the device until a log step; a call runs 1 or train.steps_per_call
                # iterations and never crosses a log, checkpoint or evaluation step (Trainer.chunk)
                state, metrics, n_run = trainer.run(state, step, end)
                pending.append(metrics)
                pending_steps += n_run
                done = step + n_run
                if done % config.train.log_every == 0 or done == end:
                    _check_finite(state, manager, workdir)
                    means = {k: float(v) for k, v in jax.device_get(jax.tree_util.tree_map(
                        lambda *xs: jnp.mean(jnp.concatenate([jnp.ravel(x) for x in xs])), *pending)).items()}
                    rate = pending_steps / max(time.time() - t_log, 1e-9)
                    pending, pending_steps = [], 0
                    t_log = time.time()
                    if writer is not None:
                        for k, v in means.items():
                            writer.add_scalar(f"train/{k}", v, done)
                        writer.add_scalar("train/steps_per_second", rate, done)
                    if bar is not None:
                        bar.set_postfix({k: f"{means[k]:.3g}" for k in method.progress_metrics if k in means},
                                        refresh=False)
                if bar is not None:
                    bar.update(n_run)
                if done % config.train.checkpoint_every == 0:
                    save(done)
                if config.train.eval_every and done % config.train.eval_every == 0 and done != num_steps:
                    _check_finite(state, manager, workdir)
                    run_eval(done)
                if stop_requested(step + 1, done):
                    save(done)
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, done)
                step = done
            if end < num_steps:  # stop_after: a planned early stop
                save(int(jax.device_get(state["step"])))
                return state
            final_step = int(jax.device_get(state["step"]))
            _check_finite(state, manager, workdir)
            save(final_step)
            if bar is not None:
                bar.close()
                bar = None
            metrics = run_eval(final_step, final=True)
            _say(f"step {final_step}: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())))
            _say("wrote " + " and ".join(written))
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        manager.wait_until_finished()
        manager.close()
    return state


def evaluate(workdir: str, config=None, step: Optional[int] = None):
    """--mode=eval: metrics of a checkpoint written to workdir/eval/ as JSON and TensorBoard scalars."""
    from ebm_jax import api  # here, not at the top: api imports this module
    model = api.load(workdir, step=step, config_overrides=config)
    dataset = get_dataset(model.config.data)
    metrics, png, _ = evaluate_model(model.method, model.params, dataset, model.config,
                                     _eval_key(model.config, model.step), picture=jax.process_index() == 0)
    if jax.process_index() != 0:  # a multi-process eval: every process computed the same metrics
        return metrics
    out = os.path.join(checkpointing.absolute(workdir), "eval")
    checkpointing.makedirs(out)
    write_json_atomic(os.path.join(out, f"metrics_step{model.step}.json"), {"step": model.step, **metrics})
    if png is not None:
        evaluation.write_atomic(os.path.join(out, f"density_step{model.step}.png"), png)
    writer = _make_writer(workdir)
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"eval/{k}", v, model.step)
        writer.close()
    return metrics


def sample(workdir: str, config=None, step: Optional[int] = None):
    """--mode=sample: samples of a checkpoint written to workdir/samples/ as .npz and a picture."""
    from ebm_jax import api  # here, not at the top: api imports this module
    model = api.load(workdir, step=step, config_overrides=config)
    s = model.config.sampling
    key = jax.random.fold_in(jax.random.PRNGKey(int(model.config.train.seed) + 2), model.step)
    x, rate = model.sample(key, int(s.num_samples), return_acceptance=True)
    x = np.asarray(x)
    out = os.path.join(checkpointing.absolute(workdir), "samples")
    base = os.path.join(out, f"samples_step{model.step}")
    if jax.process_index() != 0:  # a multi-process run: process 0 writes the (identical) samples
        return base + ".npz"
    checkpointing.makedirs(out)
    buf = io.BytesIO()
    np.savez(buf, x=x, acceptance_rate=np.asarray(rate), step=np.asarray(model.step))
    evaluation.write_atomic(base + ".npz", buf.getvalue())
    if x.ndim == 2 and x.shape[1] == 2:
        extent = get_dataset(model.config.data).extent if not model.config.data.path else None
        title = (f"{model.method.name}: {len(x)} samples, {s.mcmc_steps} MALA steps in {s.space} space "
                 f"(acceptance {float(rate):.2f})")
        evaluation.write_atomic(base + ".png", evaluation.plot_samples_2d(x, extent, title))
    return base + ".npz"
