"""Which implementation of a few operations a program is traced with: model.kernels.

Some operations were rewritten because XLA's CPU backend ran lax's form slowly (measured on a 2-core
CPU; docs/performance.md):
  * convolutions with small outputs, and strided ones, as im2col matrix products, and transposed
    convolutions as a matrix product and an overlap-add (models/conv.py);
  * the critic steps of an iteration as a Python loop instead of lax.scan (methods/meg.py, ebm_bb.py):
    inside a loop XLA:CPU kept the DCGAN energy's weight-gradient convolutions in a slow layout;
  * the median of SVGD's bandwidth heuristic as an exact bisection on the floats' bits instead of a
    sort (estimators/stein.py);
  * explicit Jacobians by reverse mode when the output is no wider than the latent (methods/ebm_bb.py);
  * spectral normalisation's power iteration on the Gram matrix W^T W (fan-outs up to 128): half the
    sequential steps, for a product that every device repeats (models/mlp.py).
On GPUs and TPUs these were never measured to help, so there the programs use lax's convolutions,
lax.scan, jnp.median, forward mode and pairs of matrix-vector products. model.kernels chooses:
  'auto'    the rewrites on a CPU backend, the native forms elsewhere (the default);
  'native'  always the native forms;
  'cpu'     always the rewrites (to test them against the native forms on one machine).
The choice is read while a program is traced: the loop, evaluation and ebm_jax.load trace inside
`use(config.model.kernels)`; anything traced outside it gets 'auto'.
"""
import contextlib
import contextvars

import jax

KERNELS = ("auto", "native", "cpu")
_CHOICE = contextvars.ContextVar("ebm_jax_kernels", default="auto")


@contextlib.contextmanager
def use(choice: str = "auto"):
    """Traces inside this block use `choice` ('auto', 'native' or 'cpu')."""
    if choice not in KERNELS:
        raise ValueError(f"model.kernels={choice!r} is invalid; valid values are {list(KERNELS)}.")
    token = _CHOICE.set(choice)
    try:
        yield
    finally:
        _CHOICE.reset(token)


def cpu_rewrites() -> bool:
    """Whether the program being traced uses the CPU rewrites."""
    choice = _CHOICE.get()
    return choice == "cpu" or (choice == "auto" and jax.default_backend() == "cpu")


def of(config) -> str:
    """config.model.kernels ('auto' for configs saved before the field existed)."""
    return str(config.model.get("kernels", "auto"))
