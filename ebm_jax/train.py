"""train_and_evaluate(config, workdir): the one training loop every method shares.

The loop knows nothing of the method: it asks the registry for one, then only calls its init and
train_step, and hands the parameters to the evaluation (ebm_jax.evaluation.model_eval). One iteration of a method (all its inner updates) is one
jit-compiled call with the state donated; the rng of iteration s is fold_in(key, s) and its data batch
is a function of s alone, so a resumed run reproduces an uninterrupted one exactly.
"""
import os
import signal
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ebm_jax import checkpointing, configlib, evaluation, kernels, parallel
from ebm_jax.data import get_dataset
from ebm_jax.evaluation.model_eval import (evaluate_replicas, format_metrics, make_writer, ood_evaluation_data,
                                           write_eval_scalars, write_json_atomic)
from ebm_jax.methods import get_method
from ebm_jax.methods.base import ConfigError
from ebm_jax.state import host_step, init_full_state, num_seeds


def _say(msg: str) -> None:
    """Progress messages for the user, from process 0 only (absl logging is left to libraries)."""
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite: at `step`, in `replicas` (the seeds of a multi-seed run
    that did; (0,) for a single-seed run)."""

    def __init__(self, message, step=None, replicas=()):
        super().__init__(message)
        self.step, self.replicas = step, tuple(replicas)


class Trainer:
    """Compiled iteration, state initialisation and batching for one config and dataset."""

    def __init__(self, config, dataset=None, devices=None):
        configlib.validate(config)
        self.config = config
        self.dataset = dataset if dataset is not None else get_dataset(config.data)
        self.method = get_method(config, self.dataset.shape)
        if config.eval.get("ood_data_dir", ""):
            # fail before training, not at the final evaluation, when the OOD set is missing or of another shape
            ood_evaluation_data(config, self.dataset)
        self.mesh = parallel.make_mesh(devices)
        self.num_devices = self.mesh.devices.size
        self.batch_size = int(config.data.batch_size)
        if self.batch_size % self.num_devices:
            n = self.num_devices
            below, above = self.batch_size // n * n, (self.batch_size // n + 1) * n
            sizes = f"{below} or {above}" if below else f"{above}"
            raise ConfigError(
                f"config.data.batch_size={self.batch_size} does not split over {n} devices; use a multiple of {n}, "
                f"e.g. {sizes} ({self.batch_size / n:g} rows a device does not divide).")
        self.replicated = parallel.replicated(self.mesh)
        self.batch_sharding = parallel.batch_sharding(self.mesh, batch_axis=1)
        # train.num_seeds = S > 1: S independent replicas in one program, the iteration vmapped over a
        # leading seed axis of the state. Replica i is the run of train.seed + i (its init and step keys);
        # all replicas see the same batches (the data order is data.seed's). S = 1 is the plain program.
        self.kernels = kernels.of(config)   # which implementation of the CPU-rewritten operations (ebm_jax.kernels)
        self.num_seeds = num_seeds(config)
        seed = int(config.train.seed)
        if self.num_seeds == 1:
            self.base_key = jax.random.PRNGKey(seed)
        else:
            self.base_key = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(self.num_seeds)])
        # parameters replicated, optimiser state split over the devices (parallel.state_shardings)
        with kernels.use(self.kernels):
            self._state_shapes = jax.eval_shape(self._init_state, self._init_keys())
        self.state_sharding = parallel.state_shardings(self.mesh, self._state_shapes, skip_leading=self.num_seeds > 1)
        # traces of the one-step and the several-step program: each must stay at most 1 (no retracing)
        self.traces = {"single": 0, "multi": 0}
        self.iteration = jax.jit(
            self._iteration, donate_argnums=0,
            in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated))
        # train.steps_per_call = K > 1: K iterations per dispatch, a lax.scan over K batches (tiny models
        # spend most of an iteration in Python dispatch otherwise); the same numbers as K single calls
        self.steps_per_call = int(config.train.get("steps_per_call", 1))
        self.multi_batch_sharding = parallel.batch_sharding(self.mesh, batch_axis=2)
        # the next call's input, read by a background thread (train.prefetch)
        self._prefetch = {} if bool(config.train.get("prefetch", True)) else None
        self._executor = None
        self.iterations = jax.jit(
            self._iterations, donate_argnums=0,
            in_shardings=(self.state_sharding, self.multi_batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated))

    @property
    def num_traces(self) -> int:
        return self.traces["single"] + self.traces["multi"]

    # -- state --
    def _init_state(self, key):
        if self.num_seeds > 1:
            return jax.vmap(lambda k: init_full_state(self.method, k))(key)
        return init_full_state(self.method, key)

    def _init_keys(self):
        # init key, distinct from every step key (of each replica)
        if self.num_seeds > 1:
            return jax.vmap(lambda k: jax.random.fold_in(k, 0x1417))(self.base_key)
        return jax.random.fold_in(self.base_key, 0x1417)

    def init_state(self):
        with kernels.use(self.kernels):
            return jax.jit(self._init_state, out_shardings=self.state_sharding)(self._init_keys())

    def abstract_state(self):
        return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                      self._state_shapes, self.state_sharding)

    # -- one iteration --
    def _seeded_step(self, state, batch, base_key):
        """One iteration of every replica: _step itself, or vmapped over the seed axis (state and keys;
        the batch is shared)."""
        if self.num_seeds > 1:
            return jax.vmap(self._step, in_axes=(0, None, 0))(state, batch, base_key)
        return self._step(state, batch, base_key)

    def _iteration(self, state, batch, base_key):
        self.traces["single"] += 1
        return self._seeded_step(state, batch, base_key)

    def _iterations(self, state, batches, base_key):
        """len(batches) iterations in one program; metrics come back stacked, (K,) per entry."""
        self.traces["multi"] += 1
        return jax.lax.scan(lambda st, b: self._seeded_step(st, b, base_key), state, batches)

    def _step(self, state, batch, base_key):
        key = jax.random.fold_in(base_key, state["step"])
        inner = {k: v for k, v in state.items() if k not in ("step", "bad_step")}
        new_inner, metrics = self.method.train_step(inner, batch, key)
        # the metrics and the new state: a loss can stay finite while a state entry overflows (Adam's
        # second moment reached inf on a CD-1 toy run whose energy scale grew without bound, the loss
        # still 1e10): saving that would leave a last checkpoint that cannot be restored
        checked = jax.tree_util.tree_leaves(metrics) + [v for v in jax.tree_util.tree_leaves(new_inner)
                                                        if jnp.issubdtype(v.dtype, jnp.inexact)]
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in checked]))
        ok = finite & (state["bad_step"] < 0)
        # A non-finite loss or state freezes the state at its last good value and records the step; the
        # host notices at the next log or checkpoint and stops without saving anything from that step on.
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

    def _input(self, step: int, k: int):
        """The device batch(es) of the call (step, k)."""
        return self.batch(step) if k == 1 else self.batches(step, k)

    def run(self, state, step: int, end: int):
        """One call from `step`: (state, metrics, number of iterations run).

        With train.prefetch (default), the next call's batches are read and transferred by a background
        thread while this call computes: they are a function of (data seed, step) alone, so a resumed
        run reads the same ones, and a prefetch that does not match the call asked for is discarded."""
        k = self.chunk(step, end)
        pending = self._prefetch.pop((step, k), None) if self._prefetch is not None else None
        if self._prefetch is not None:
            self._prefetch.clear()   # a prefetch for another call (e.g. after a change of end) is stale
        batch = pending.result() if pending is not None else self._input(step, k)
        nxt = step + k
        if self._prefetch is not None and nxt < end:
            k_next = self.chunk(nxt, end)
            self._prefetch[(nxt, k_next)] = self._pool().submit(self._input, nxt, k_next)
        # traced under the mesh (methods shard their per-example work) and the kernels choice
        with jax.set_mesh(self.mesh), kernels.use(self.kernels):
            if k == 1:
                state, metrics = self.iteration(state, batch, self.base_key)
            else:
                state, metrics = self.iterations(state, batch, self.base_key)
        return state, metrics, k

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ebm_jax_input")
        return self._executor

    def close(self):
        """Stops the input thread (waiting for a batch it is reading)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._prefetch is not None:
            self._prefetch.clear()

    def lower(self, state, k: int = 1):
        """The compiled program of k iterations from step 0 (for benchmarks: cost and memory analyses)."""
        with jax.set_mesh(self.mesh), kernels.use(self.kernels):
            if k == 1:
                return self.iteration.lower(state, self.batch(0), self.base_key).compile()
            return self.iterations.lower(state, self.batches(0, k), self.base_key).compile()


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


def _progress(config, start, total):
    if jax.process_index() != 0 or not config.train.progress_bar:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, unit="it", dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, desc="train")


def _check_finite(state, manager, workdir):
    bad = np.atleast_1d(np.asarray(jax.device_get(state["bad_step"])))
    if np.any(bad >= 0):
        last = manager.latest_step()
        kept = (f"the last good checkpoint (step {last}) in {checkpointing.checkpoint_dir(workdir)} is kept"
                if last is not None else "no checkpoint had been saved yet")
        step, replicas = int(np.min(bad[bad >= 0])), [int(i) for i in np.flatnonzero(bad >= 0)]
        where = f"step {step}"
        if bad.size > 1:
            where += (f" (replica{'s' if len(replicas) > 1 else ''} {', '.join(map(str, replicas))} "
                      f"of train.num_seeds={bad.size})")
        raise NonFiniteLossError(f"the training loss or state became non-finite at {where}; {kept}; lower "
                                 "optim.lr or check the data for extreme values.", step, replicas)


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
    checkpointing.prepare_workdir(workdir)
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
        checkpointing.check_config_compatible(saved["config"], config, workdir)
        checkpointing.check_meta(saved["meta"], current_meta, workdir)
        try:
            state = checkpointing.restore_state(manager, latest, trainer.abstract_state(),
                                                saved["meta"].get("checksums"))
        except checkpointing.CheckpointError as e:
            # Fields that shape the state (the optimiser's, the networks', the method's, the replicas):
            # a difference there, not corruption, is then the likely reason; other fields (steps, eval,
            # sampling) cannot make a checkpoint unreadable.
            diffs = [d for d in checkpointing.config_differences(saved["config"], config, limit=100)
                     if d.startswith(("optim.", "model.", "method.", "train.num_seeds", "data.batch_size"))][:3]
            if "unreadable" in str(e) and diffs:  # most likely not corruption but another config
                raise checkpointing.CheckpointError(
                    f"{workdir} holds a checkpoint of step {latest} that this config cannot restore (it differs in "
                    f"{'; '.join(diffs)}); resume with the checkpoint's values, or start afresh in another "
                    "--workdir.") from e
            raise
        _say(f"resumed from step {latest} in {workdir}")
    start = host_step(state)
    if start > num_steps:
        raise ConfigError(f"{workdir} already holds step {start}, beyond config.train.num_steps={num_steps}; "
                          "raise train.num_steps or use another workdir.")

    end = num_steps if stop_after is None else min(num_steps, max(start, int(stop_after)))
    writer = make_writer(workdir)
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
        with kernels.use(trainer.kernels):
            metrics, png = evaluate_replicas(method, params, trainer.dataset, config, step_now, trainer.num_seeds)
        if jax.process_index() != 0:
            return metrics
        if writer is not None:
            write_eval_scalars(writer, metrics, step_now)
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
                save(host_step(state))
                return state
            final_step = host_step(state)
            _check_finite(state, manager, workdir)
            save(final_step)
            if bar is not None:
                bar.close()
                bar = None
            metrics = run_eval(final_step, final=True)
            _say(f"step {final_step}: " + format_metrics(metrics))
            _say("wrote " + " and ".join(written))
    finally:
        trainer.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        manager.wait_until_finished()
        manager.close()
    return state


