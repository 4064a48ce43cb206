"""ebm_jax's MEG, EBM-BB and EBM-0GP toy iterations against PyTorch peers at identical sizes, in one run.

    pip install torch==2.13.0     # this project's machines (the CPU wheel on disk); elsewhere the CPU wheel:
                                  # pip install torch --index-url https://download.pytorch.org/whl/cpu
    python bench/peers.py                                  # every peer, 1 thread and default threads
    python bench/peers.py --peers ebm_bb --threads 1 --json peers.json

The peers (bench/torch_peers.py) re-state the official scripts' iterations with the official sizes and
per-iteration work; ebm_jax runs the matching configs:
  meg      configs/meg.py:paper  (3x512 networks, batch 256, 5 critic steps, lambda 0.1, Adam(1e-4, 0.5, 0.9))
  ebm_bb   configs/ebm_bb.py (its default method.entropy=svd: s_1 of the explicit 2x2 Jacobian, as the
           reference's torch.svd), and the LOBPCG entropy (5 warm-started iterations) as a second row
  ebm_0gp  configs/ebm_0gp.py, the same two entropy rows
Every (framework, peer, thread setting) runs in a fresh process: '1' pins the process to one core
(sched_setaffinity; torch.set_num_threads(1), XLA's --xla_cpu_multi_thread_eigen=false), 'default'
leaves both libraries their own defaults on every core. An ebm_jax iteration is timed as the training
loop runs it (Trainer.run: the host batch, its transfer, the compiled call), after compilation.

For MEG the table adds the compiled iteration's floor: XLA's FLOP count of the iteration divided by the
float32 matmul rate measured in the same process, on the product the iteration is made of (a batch of
256 rows through a 512 x 512 layer: (256, 512) @ (512, 512)); "peak" columns use the best square
product instead (n = 256, 512, 1024), which a 256-row layer does not reach.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# the toy defaults' energy regulariser (not in the paper or its script) is off, so that both frameworks
# do the same work an iteration
_NO_REG = {"method.energy_reg": 0.0}
JAX_ROWS = {
    "meg": [("configs/meg.py:paper", {}, "")],
    "ebm_bb": [("configs/ebm_bb.py", _NO_REG, "svd"),
               ("configs/ebm_bb.py", {**_NO_REG, "method.entropy": "lobpcg"}, "lobpcg 5")],
    "ebm_0gp": [("configs/ebm_0gp.py", _NO_REG, "svd"),
                ("configs/ebm_0gp.py", {**_NO_REG, "method.entropy": "lobpcg"}, "lobpcg 5")],
}


def _pin(threads: str):
    if threads == "1":
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def worker_torch(peer: str, threads: str, min_seconds: float):
    _pin(threads)
    import torch
    sys.path.insert(0, HERE)
    from common import time_calls
    from torch_peers import PEERS
    if threads == "1":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    p = PEERS[peer]()
    for _ in range(3):
        p.step()
    s = time_calls(p.step, min_seconds=min_seconds)
    return [{"framework": f"torch {torch.__version__}", "peer": peer, "threads": threads,
             "torch_threads": torch.get_num_threads(), "ms_per_iteration": 1e3 * s}]


def worker_jax(peer: str, threads: str, min_seconds: float, requested_steps_per_call: int):
    _pin(threads)
    if threads == "1":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    import jax
    sys.path.insert(0, HERE)
    from common import compile_run, load, matmul_gflops, seconds_per_iteration
    from ebm_jax import train
    rows = []
    for spec, over, label in JAX_ROWS[peer]:
        over = {**over, "train.progress_bar": False, "train.log_every": 10 ** 6, "train.checkpoint_every": 10 ** 6,
                "train.eval_every": 0}
        if requested_steps_per_call:
            over["train.steps_per_call"] = requested_steps_per_call
        trainer = train.Trainer(load(spec, over))
        steps_per_call = trainer.steps_per_call
        compile_s, figures = compile_run(trainer, trainer.init_state())
        gflop = figures["gflop"]
        s = seconds_per_iteration(trainer, trainer.init_state(), min_seconds)
        row = {"framework": f"jax {jax.__version__}", "peer": peer, "threads": threads, "config": spec,
               "entropy": label, "steps_per_call": steps_per_call, "ms_per_iteration": 1e3 * s,
               "compile_seconds": compile_s, "gflop": gflop}
        if peer == "meg":
            rate, peak = matmul_gflops(((256, 512, 512),)), matmul_gflops()
            row.update(matmul_gflops=rate, floor_ms=1e3 * gflop / rate,
                       peak_matmul_gflops=peak, peak_floor_ms=1e3 * gflop / peak)
            row["x_floor"] = row["ms_per_iteration"] / row["floor_ms"]
            row["x_peak_floor"] = row["ms_per_iteration"] / row["peak_floor_ms"]
        rows.append(row)
    return rows


def run_worker(framework, peer, threads, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--peers", peer, "--threads", threads,
           "--min_seconds", str(args.min_seconds), "--steps_per_call", str(args.steps_per_call)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the {framework} worker for {peer} ({threads} thread(s)) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", nargs="+", default=list(JAX_ROWS), choices=list(JAX_ROWS))
    parser.add_argument("--threads", nargs="+", default=["1", "default"], choices=["1", "default"])
    parser.add_argument("--min_seconds", type=float, default=3.0, help="length of each of the 3 timed rounds")
    parser.add_argument("--steps_per_call", type=int, default=0,
                        help="ebm_jax iterations per compiled call (default: each config's own train.steps_per_call)")
    parser.add_argument("--json", default="", help="also write every row to this JSON file")
    parser.add_argument("--worker", default="", choices=["", "torch", "jax"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        peer, threads = args.peers[0], args.threads[0]
        rows = (worker_torch(peer, threads, args.min_seconds) if args.worker == "torch"
                else worker_jax(peer, threads, args.min_seconds, args.steps_per_call))
        print(json.dumps(rows))
        return

    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("bench/peers.py needs PyTorch for the peers: pip install torch==2.13.0 here, or elsewhere "
                         "pip install torch --index-url https://download.pytorch.org/whl/cpu")
    sys.path.insert(0, HERE)
    from common import backend_line, print_table, write_json
    table, raw = [], []
    for threads in args.threads:
        for peer in args.peers:
            t_rows = run_worker("torch", peer, threads, args)
            j_rows = run_worker("jax", peer, threads, args)
            raw += t_rows + j_rows
            torch_ms = t_rows[0]["ms_per_iteration"]
            for j in j_rows:
                table.append({"peer": peer, "threads": threads, "ebm_jax entropy": j["entropy"] or "-",
                              "torch ms/it": torch_ms, "ebm_jax ms/it": j["ms_per_iteration"],
                              "speed-up": torch_ms / j["ms_per_iteration"], "GFLOP/it": j.get("gflop"),
                              "matmul GFLOP/s": j.get("matmul_gflops"), "floor ms": j.get("floor_ms"),
                              "x floor": j.get("x_floor"), "peak GFLOP/s": j.get("peak_matmul_gflops"),
                              "x peak floor": j.get("x_peak_floor"), "compile s": j["compile_seconds"]})
    per_call = sorted({r["steps_per_call"] for r in raw if "steps_per_call" in r})
    print(backend_line() + f"; {os.cpu_count()} CPU cores; ebm_jax steps_per_call {per_call}")
    print_table(table, ["peer", "threads", "ebm_jax entropy", "torch ms/it", "ebm_jax ms/it", "speed-up",
                        "GFLOP/it", "matmul GFLOP/s", "floor ms", "x floor", "peak GFLOP/s", "x peak floor",
                        "compile s"])
    write_json(args.json, raw)


if __name__ == "__main__":
    main()
