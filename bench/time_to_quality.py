"""Training seconds until each method's model reaches the 2-D quality bar, on 25-Gaussians and the swiss roll.

    python bench/time_to_quality.py                              # every method, both toys, <= 240 s of training each
    python bench/time_to_quality.py --methods meg ebm_bb --datasets 25gaussians --cap_seconds 120
    python bench/time_to_quality.py --json ttq.json

Each method trains with its default toy config (configs/METHOD.py:DATASET: its networks, batch, optimiser
and learning-rate schedule over its own train.num_steps) and is evaluated every --eval_seconds of
training, as `--mode=eval` would (ebm_jax.evaluation.model_eval.evaluate_model: grid density, generator and MCMC
samples). The clock counts training only: the compiled iterations with their host batches, from the
first iteration after compilation; compilation and the evaluations themselves are reported apart.
A run stops when the bar is met, at the config's last iteration, or after --cap_seconds of training.

The bar:
  25gaussians  KL(data || model) on the evaluation grid <= --kl_25gaussians (default 3.0) and all 25 modes
               covered (>= eval.mode_min_count high-quality samples, within 3 std of a centre) by the
               model's sampler: its generator, or the MCMC samples of config.sampling (latent MALA from the
               generator; data-space MALA for the energy-only SteinCD / CD)
  swissroll    KL(data || model) <= --kl_swissroll (default 2.0)
The KL thresholds are this benchmark's choice: about what the better methods reach within their default
schedules (docs/methods/), so that the table separates fast from slow and from never.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from common import backend_line, load, print_table, write_json  # noqa: E402

METHODS = {"meg": "configs/meg.py", "ebm_bb": "configs/ebm_bb.py", "ebm_0gp": "configs/ebm_0gp.py",
           "wgan_0gp": "configs/wgan_0gp.py", "steincd": "configs/steincd.py", "cd": "configs/steincd.py:cd1",
           "steingan": "configs/steingan.py", "ddgm": "configs/ddgm.py", "triangle": "configs/triangle.py"}
DATASETS = ("25gaussians", "swissroll")


def bar_met(metrics, dataset, args):
    kl = metrics.get("kl_data_model")
    if kl is None or kl > (args.kl_25gaussians if dataset == "25gaussians" else args.kl_swissroll):
        return False
    if dataset == "25gaussians":
        modes = max(metrics.get("generator/modes_covered", 0), metrics.get("mcmc/modes_covered", 0))
        return modes >= metrics.get("generator/num_modes", metrics.get("mcmc/num_modes", 25))
    return True


def run(method, dataset, args):
    from ebm_jax import train
    from ebm_jax.evaluation import model_eval
    path, _, variant = METHODS[method].partition(":")
    spec = path + ":" + ",".join(t for t in (variant, dataset) if t)
    config = load(spec, {"train.progress_bar": False, "eval.mcmc": True})
    trainer = train.Trainer(config)
    num_steps = int(config.train.num_steps)
    state = trainer.init_state()
    t0 = time.perf_counter()
    k = trainer.steps_per_call
    if k > 1:
        trainer.iterations.lower(state, trainer.batches(0, k), trainer.base_key).compile()
    trainer.iteration.lower(state, trainer.batch(0), trainer.base_key).compile()
    compile_s = time.perf_counter() - t0
    trained, step, evals, eval_s, best = 0.0, 0, 0, 0.0, None
    row = {"method": method, "dataset": dataset, "config": spec, "compile_seconds": compile_s, "reached": False}
    while step < num_steps and trained < args.cap_seconds:
        t0 = time.perf_counter()
        while step < num_steps and time.perf_counter() - t0 < args.eval_seconds:
            state, _, n = trainer.run(state, step, num_steps)
            step += n
        jax.block_until_ready(state)
        trained += time.perf_counter() - t0
        t1 = time.perf_counter()
        params = jax.device_get(trainer.method.inference_params(state))
        metrics, _, _ = model_eval.evaluate_model(trainer.method, params, trainer.dataset, config,
                                             jax.random.PRNGKey(evals), picture=False)
        eval_s += time.perf_counter() - t1
        evals += 1
        kl = metrics.get("kl_data_model")
        if best is None or kl < best:
            best = kl
        row.update(last_kl=kl, best_kl=best, steps=step, train_seconds=trained,
                   modes_generator=metrics.get("generator/modes_covered"),
                   modes_mcmc=metrics.get("mcmc/modes_covered"))
        print(f"  {method} {dataset}: step {step}, {trained:.1f} s, KL {kl:.3f}, modes gen/mcmc "
              f"{row['modes_generator']}/{row['modes_mcmc']}", file=sys.stderr, flush=True)
        if bar_met(metrics, dataset, args):
            row["reached"] = True
            break
    row.update(evaluations=evals, eval_seconds=eval_s, its_per_second=step / max(trained, 1e-9))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--cap_seconds", type=float, default=240.0, help="training seconds at most per run")
    parser.add_argument("--eval_seconds", type=float, default=10.0, help="training seconds between evaluations")
    parser.add_argument("--kl_25gaussians", type=float, default=3.0)
    parser.add_argument("--kl_swissroll", type=float, default=2.0)
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        for method in args.methods:
            rows.append(run(method, dataset, args))
    print(backend_line() + f"; bar: 25gaussians KL <= {args.kl_25gaussians} and 25/25 modes, "
          f"swissroll KL <= {args.kl_swissroll}; cap {args.cap_seconds:.0f} s of training")
    for r in rows:
        r["seconds_to_bar"] = r["train_seconds"] if r["reached"] else None
    print_table(rows, ["dataset", "method", "reached", "seconds_to_bar", "steps", "train_seconds", "its_per_second",
                       "last_kl", "best_kl", "modes_generator", "modes_mcmc", "compile_seconds", "evaluations"])
    write_json(args.json, {"backend": backend_line(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
