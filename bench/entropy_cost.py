"""Accuracy and cost of EBM-BB's entropy term d log s_1(z) for each singular-value algorithm.

    python bench/entropy_cost.py                           # d = 2, 16, 48, 128 generators (~5 min on 2 CPU cores)
    python bench/entropy_cost.py --only=128 --iters=10,20,64,128
    python bench/entropy_cost.py --workdir=runs/bb_mnist   # the generator of an EBM-BB checkpoint (:mnist)
    python bench/entropy_cost.py --json=bench/results/entropy_cost.json

For every generator G: R^d -> R^D and batch of z, and every algorithm of method.entropy:

* svd          explicit per-sample Jacobian (d jvps, or D vjps when D <= d, without gradient) and its
               exact s_1, recomputed as ||J v|| by one differentiable jvp;
* lanczos k    Golub-Kahan-Lanczos bidiagonalisation, k jvp + vjp pairs, from a random start ("cold")
               or from the vectors of the previous batch of z ("warm", what training does);
* lobpcg k     single-vector LOBPCG on J^T J (the paper's estimator), cold or warm;

it prints the relative error of s_1 against numpy's float64 SVD of the explicit Jacobian (mean and
worst over the batch), the cosine between the parameter gradient of mean_z d log s_1 and the exact
one (the gradient of d log(u^T J v) with numpy's singular vectors u, v held fixed: d s_1 = u^T dJ v),
and the wall time of value + parameter gradient, in ms and as a multiple of one generator forward +
backward pass over the batch (grad of sum G(z)). Times: jitted, median of repeated calls after a
warm-up, on whatever backend JAX picks (`JAX_PLATFORMS=cpu` for the CPU).

Synthetic generators (PReLU-like leaky-ReLU hidden layers, slope 0.25): d=2 2-100-100-2 (the toys,
batch 200); d=16 16-128-128-256 and d=48 48-256-300 with tanh, batch 64; d=128 the MNIST size
128-500-1000-2000-784 with a tanh output, batch 64.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ebm_jax.estimators import singular_values as sv  # noqa: E402

CASES = {
    2: dict(sizes=(2, 100, 100, 2), batch=200, hidden_act="leaky", out_act=None),
    16: dict(sizes=(16, 128, 128, 256), batch=64, hidden_act="leaky", out_act=None),
    48: dict(sizes=(48, 256, 300), batch=64, hidden_act="tanh", out_act=None),
    128: dict(sizes=(128, 500, 1000, 2000, 784), batch=64, hidden_act="leaky", out_act=jnp.tanh),
}


def init(seed, sizes):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2.0 / a), jnp.float32),
             jnp.asarray(0.01 * rng.normal(size=b), jnp.float32)) for a, b in zip(sizes[:-1], sizes[1:])]


def mlp(params, z, hidden_act, out_act):
    h = z
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = jnp.tanh(h) if hidden_act == "tanh" else jax.nn.leaky_relu(h, 0.25)
        elif out_act is not None:
            h = out_act(h)
    return h


def timeit(fn, args, repeats, min_total_s=0.5):
    """Median wall time of one call; at least `repeats` calls, more (up to 200) for fast ones."""
    jax.block_until_ready(fn(*args))  # compile + warm-up
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = time.perf_counter() - t0
    times = []
    for _ in range(max(repeats, min(200, int(min_total_s / max(once, 1e-6))))):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def flat_cosine(a, b):
    fa = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(a)])
    fb = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(b)])
    return float(fa @ fb / (np.linalg.norm(fa) * np.linalg.norm(fb) + 1e-300))


def exact_reference(g, params, z):
    """numpy float64 SVD of every explicit Jacobian: (s_1 (B,), s_max (B,), exact parameter gradient)."""
    jac = np.asarray(jax.jit(jax.vmap(lambda zi: sv.jacobian(lambda x: g(params, x), zi)))(z), np.float64)
    u, s, vt = np.linalg.svd(jac, full_matrices=False)
    d = z.shape[1]
    u1 = jnp.asarray(u[:, :, -1], jnp.float32)
    v1 = jnp.asarray(vt[:, -1, :], jnp.float32)

    def surrogate(p):
        # u^T J v with numpy's singular vectors fixed: its gradient is the exact d s_1 = u^T dJ v
        def one(zi, ui, vi):
            return ui @ jax.jvp(lambda x: jnp.ravel(g(p, x)), (zi,), (vi,))[1]
        return jnp.mean(d * jnp.log(jnp.abs(jax.vmap(one)(z, u1, v1))))
    return s[:, -1], s[:, 0], jax.jit(jax.grad(surrogate))(params)


def estimator(g, d, kind, k):
    """value_and_grad of (mean_z d log s_1, vectors) for one algorithm, a jitted fn(params, z, keys, v0)."""
    def entropy_term(p, z, keys, v0):
        if kind == "svd":
            s, v = jax.vmap(lambda zi: sv.smallest_singular_value_exact(lambda x: g(p, x), zi))(z)
        else:
            s, v = jax.vmap(lambda zi, ki, vi: sv.smallest_singular_value(
                lambda x: g(p, x), zi, ki, k, vi, kind))(z, keys, v0)
        return jnp.mean(d * jnp.log(s)), (s, v)
    return jax.jit(jax.value_and_grad(entropy_term, has_aux=True))


def bench_generator(name, g, params, z, z_prev, iters, repeats, algorithms):
    """Rows for one generator g(params, z) and batch z (z_prev: the batch whose vectors warm-start)."""
    batch, d = z.shape
    keys = jax.random.split(jax.random.PRNGKey(2), batch)
    v_rand = jax.random.normal(jax.random.PRNGKey(3), z.shape)
    s1, smax, g_exact = exact_reference(g, params, z)
    baseline = jax.jit(jax.grad(lambda p, z: jnp.sum(g(p, z))))
    t_base = timeit(baseline, (params, z), repeats)
    head = dict(case=name, d=d, D=int(np.prod(jax.eval_shape(lambda x: g(params, x[None]), z[0]).shape)),
                batch=batch, s1_median=float(np.median(s1)), cond_median=float(np.median(smax / s1)))
    rows = [dict(head, method="fwd+bwd (baseline)", start="", num_iters=None, ms=1e3 * t_base, ratio=1.0)]

    def row(kind, k, start, v0):
        fn = estimator(g, d, kind, k)
        (_, (s, _)), grads = fn(params, z, keys, v0)
        err = np.abs(np.asarray(s, np.float64) / s1 - 1.0)
        t = timeit(fn, (params, z, keys, v0), repeats)
        rows.append(dict(head, method=kind, start=start, num_iters=k, rel_err_mean=float(np.mean(err)),
                         rel_err_max=float(np.max(err)), grad_cosine=flat_cosine(grads, g_exact),
                         ms=1e3 * t, ratio=t / t_base))

    if "svd" in algorithms:
        row("svd", None, "", v_rand)
    for kind in ("lanczos", "lobpcg"):
        if kind not in algorithms:
            continue
        for k in iters(d):
            row(kind, k, "cold", v_rand)
            # warm: the vectors this algorithm returned on the previous batch, as in training
            (_, (_, v_prev)), _ = estimator(g, d, kind, k)(params, z_prev, keys, v_rand)
            row(kind, k, "warm", v_prev)
    return rows


def synthetic(d, cfg, iters, repeats, algorithms):
    params = init(0, cfg["sizes"])
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(cfg["batch"], d)), jnp.float32)
    z_prev = jnp.asarray(rng.normal(size=(cfg["batch"], d)), jnp.float32)
    g = lambda p, x: mlp(p, x, cfg["hidden_act"], cfg["out_act"])  # noqa: E731
    return bench_generator(f"mlp d={d}", g, params, z, z_prev, iters, repeats, algorithms)


def from_workdir(workdir, iters, repeats, algorithms, batch=64):
    """The generator of an EBM-BB / EBM-0GP checkpoint, per sample with a batch's statistics fixed."""
    import ebm_jax
    model = ebm_jax.load(workdir)
    method = model.method
    p, stats = model.params["generator"], model.params.get("generator_stats", {})
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(batch,) + method.latent_shape), jnp.float32)
    z_prev = jnp.asarray(rng.normal(size=(batch,) + method.latent_shape), jnp.float32)
    # the statistics of one training batch, held fixed: the per-sample map the method differentiates
    _, used, _ = method.gen.train_batch(p, stats, z, update_stats=False)
    def g(pp, x):  # one z (d,) or a batch (B, d)
        fb = method.gen.given_batch(pp, stats, used)
        return fb(x[None])[0] if x.ndim == 1 else fb(x)
    return bench_generator(f"{workdir} step {model.step}", g, p, z, z_prev, iters, repeats, algorithms)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", default="5,10,20,half,full",
                        help="comma-separated iteration counts; 'half' = d/2 and 'full' = d")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per entry (median reported)")
    parser.add_argument("--only", default="", help="comma-separated latent sizes of the synthetic cases")
    parser.add_argument("--workdir", default="", help="also (or, with --only=none, only) an EBM-BB checkpoint")
    parser.add_argument("--algorithms", default="svd,lanczos,lobpcg")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()

    def iters(d):
        out = []
        for tok in args.iters.split(","):
            k = {"half": d // 2, "full": d}.get(tok) if tok in ("half", "full") else int(tok)
            if 0 < k <= d and k not in out:
                out.append(k)
        return out

    algorithms = args.algorithms.split(",")
    only = [t for t in args.only.split(",") if t]
    rows = []
    for d, cfg in CASES.items():
        if only and str(d) not in only:
            continue
        rows += synthetic(d, cfg, iters, args.repeats, algorithms)
    if args.workdir:
        rows += from_workdir(args.workdir, iters, args.repeats, algorithms)

    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}); s_1 relative error against numpy "
          "float64 SVD, gradient cosine against the exact gradient, time of value + parameter gradient")
    print(f"{'case':<28} {'method':<8} {'start':<5} {'iters':>5} {'rel err mean':>12} {'max':>9} "
          f"{'grad cos':>8} {'ms':>9} {'x fwd+bwd':>9}")
    for r in rows:
        if r["method"].startswith("fwd"):
            print(f"{r['case']:<28} d={r['d']} D={r['D']} batch={r['batch']}  median s_1 {r['s1_median']:.3g}, "
                  f"median s_max/s_1 {r['cond_median']:.3g}; fwd+bwd {r['ms']:.2f} ms")
            continue
        it = "" if r["num_iters"] is None else str(r["num_iters"])
        print(f"{r['case']:<28} {r['method']:<8} {r['start']:<5} {it:>5} {r['rel_err_mean']:>12.2e} "
              f"{r['rel_err_max']:>9.2e} {r['grad_cosine']:>8.4f} {r['ms']:>9.2f} {r['ratio']:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(backend=jax.default_backend(), device=jax.devices()[0].device_kind, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
