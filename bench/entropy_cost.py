"""Cost of the EBM-BB entropy term, as a multiple of one generator forward+backward pass.

    python bench/entropy_cost.py                       # toy + MNIST-size generators, ~1 min on CPU
    python bench/entropy_cost.py --repeats=10 --json=entropy_cost.json
    python bench/entropy_cost.py --iters=1,3,10 --only=toy

What is timed (all jitted, vmapped over the batch, wall time via time.perf_counter after a
warm-up call, block_until_ready, median of at least --repeats calls, more for fast entries):

* baseline: grad of sum(G(z)) w.r.t. the generator parameters (one forward + one backward pass);
* lobpcg k: value and parameter-gradient of mean_z d*log s_1(z) (the Eq. 11 entropy term), where
  s_1 comes from `smallest_singular_value` with num_iters=k (cold start) -- i.e. the k LOBPCG
  iterations plus the differentiable surrogate ||J v|| and its gradient;
* exact (toy only): value and parameter-gradient of mean_z 1/2 log det(J^T J) with the explicit
  Jacobian (`log_det_jacobian`, the `entropy="exact"` path);
* floor k: what k iterations cannot go below, one jvp + one vjp each: the differentiable surrogate
  ||J v|| with its parameter gradient (k = 0) plus k products J^T (J v) on the once-linearised
  generator, the marginal cost of one product measured as (t(linearise + 21 products) -
  t(linearise + 1 product)) / 20. LOBPCG as implemented applies J^T J to two vectors per iteration
  (batched) plus small dense work, so "x floor" shows what that costs over the minimum.

Generators (d -> D, batch): toy 2-100-100-2 with leaky-ReLU (PReLU-like, slope 0.25) hidden
layers, batch 200; MNIST-size 128-500-1000-2000-784 with leaky-ReLU hidden layers and a tanh
output, batch 64.
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

from ebm_jax.estimators.singular_values import log_det_jacobian, smallest_singular_value  # noqa: E402

CASES = {
    "toy": dict(sizes=(2, 100, 100, 2), batch=200, out_act=None),
    "mnist": dict(sizes=(128, 500, 1000, 2000, 784), batch=64, out_act=jnp.tanh),
}


def init(seed, sizes):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2.0 / a), jnp.float32),
             jnp.asarray(0.01 * rng.normal(size=b), jnp.float32)) for a, b in zip(sizes[:-1], sizes[1:])]


def generator(params, z, out_act):
    h = z
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = jax.nn.leaky_relu(h, 0.25)
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


def bench_case(name, cfg, iters, repeats):
    sizes, batch, out_act = cfg["sizes"], cfg["batch"], cfg["out_act"]
    d = sizes[0]
    params = init(0, sizes)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(batch, d)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(2), batch)

    def g(p, x):
        return generator(p, x, out_act)

    baseline = jax.jit(jax.grad(lambda p, z: jnp.sum(g(p, z))))
    t_base = timeit(baseline, (params, z), repeats)
    rows = [dict(case=name, method="fwd+bwd (baseline)", num_iters=None, seconds=t_base, ratio=1.0)]

    # the floor: the surrogate ||J v|| (value + parameter gradient) and the marginal J^T J v product
    v_unit = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    surrogate = jax.jit(jax.value_and_grad(lambda p, z, v: jnp.mean(d * jnp.log(jax.vmap(
        lambda zi, vi: jnp.linalg.norm(jax.jvp(lambda x: g(p, x), (zi,), (vi,))[1]))(z, v)))))
    t_surrogate = timeit(surrogate, (params, z, v_unit), repeats)

    def products(n):
        def one(p, zi, vi):
            _, lin = jax.linearize(lambda x: g(p, x), zi)
            lin_t = jax.linear_transpose(lin, zi)
            return jax.lax.fori_loop(0, n, lambda _, u: lin_t(lin(u))[0] / (jnp.linalg.norm(u) + 1.0), vi)
        return jax.jit(lambda p, z, v: jax.vmap(lambda zi, vi: one(p, zi, vi))(z, v))
    t_product = max((timeit(products(21), (params, z, v_unit), repeats)
                     - timeit(products(1), (params, z, v_unit), repeats)) / 20, 0.0)
    floor = {k: t_surrogate + k * t_product for k in iters}

    for k in iters:
        def entropy_term(p, z, keys, k=k):
            s_min, v = jax.vmap(lambda zi, ki: smallest_singular_value(
                lambda x: g(p, x), zi, ki, k))(z, keys)
            return jnp.mean(d * jnp.log(s_min)), v  # v: the warm start for the next step
        est = jax.jit(jax.value_and_grad(entropy_term, has_aux=True))
        t = timeit(est, (params, z, keys), repeats)
        rows.append(dict(case=name, method="lobpcg s_min + grad", num_iters=k, seconds=t,
                         ratio=t / t_base, floor_seconds=floor[k], floor_ratio=floor[k] / t_base,
                         x_floor=t / floor[k]))

    if d <= 16:  # the explicit Jacobian is only sensible for small latent dimension
        exact = jax.jit(jax.value_and_grad(lambda p, z: jnp.mean(
            jax.vmap(lambda zi: log_det_jacobian(lambda x: g(p, x), zi))(z))))
        t = timeit(exact, (params, z), repeats)
        rows.append(dict(case=name, method="exact log-det + grad", num_iters=None, seconds=t,
                         ratio=t / t_base))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", default="1,2,3,5,10", help="comma-separated LOBPCG iteration counts")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per entry (median reported)")
    parser.add_argument("--only", default="", choices=["", *CASES], help="run a single case")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    iters = [int(s) for s in args.iters.split(",") if s]

    rows = []
    for name, cfg in CASES.items():
        if args.only and name != args.only:
            continue
        rows += bench_case(name, cfg, iters, args.repeats)

    print(f"backend: {jax.default_backend()}  ({jax.devices()[0].device_kind}), median of >= {args.repeats} calls")
    print(f"{'case':<6} {'method':<22} {'iters':>5} {'ms':>10} {'x fwd+bwd':>10} {'floor ms':>10} "
          f"{'floor x fwd+bwd':>16} {'x floor':>8}")
    for r in rows:
        it = "" if r["num_iters"] is None else str(r["num_iters"])
        fl = (f"{1e3 * r['floor_seconds']:>10.2f} {r['floor_ratio']:>16.2f} {r['x_floor']:>8.2f}"
              if "floor_seconds" in r else f"{'':>10} {'':>16} {'':>8}")
        print(f"{r['case']:<6} {r['method']:<22} {it:>5} {1e3 * r['seconds']:>10.2f} {r['ratio']:>10.2f} {fl}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(backend=jax.default_backend(), repeats=args.repeats, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
