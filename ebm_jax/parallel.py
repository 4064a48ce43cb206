"""Device mesh, shardings and multi-process start-up.

A run is one or several cooperating processes (one per host on a TPU pod or a GPU cluster, or several
on one machine), each running the same loop. The mesh holds every device of every process; the global
batch is split over its 'data' axis, the parameters are replicated and the optimiser state is split
(state_shardings), so one jit-compiled iteration is one data-parallel step and XLA inserts the
reductions across devices and processes.
"""
import os
import socket
import sys
import threading
import time
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# The environment variables read when the corresponding flag is not given. JAX itself reads
# JAX_COORDINATOR_ADDRESS; the other two follow the same naming.
ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class DistributedError(RuntimeError):
    """The processes of a multi-process run cannot start together (flags, addresses, a missing peer)."""


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process) along DATA_AXIS, laid out by
    jax.make_mesh for the topology (TPU slices: the ring order of the interconnect). Auto axis types:
    shardings are constraints for XLA to propagate, not part of the arrays' types."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def shard_rows(x, axis: int = 0):
    """x with its axis `axis` split over the data axis of the mesh the program is traced under
    (Trainer traces inside jax.set_mesh), so that every per-example computation that follows runs on
    each device's share only: random draws made inside the program (z, noise, probes) are otherwise
    replicated, and everything computed from them runs in full on every device. The identity outside
    a mesh, on one device, or when the axis does not split evenly."""
    n = _traced_devices()
    if n == 1 or x.shape[axis] % n:
        return x
    spec = [None] * x.ndim
    spec[axis] = DATA_AXIS
    return jax.lax.with_sharding_constraint(x, P(*spec))


def _traced_devices() -> int:
    """The size of the data axis of the mesh the program is traced under (1 outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or DATA_AXIS not in mesh.axis_names:
        return 1
    return mesh.shape[DATA_AXIS]


def replicate(tree):
    """Every array of `tree` constrained to be whole on every device of the mesh the program is traced
    under (the identity outside a mesh or on one device)."""
    if _traced_devices() == 1:
        return tree
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, P()), tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, shapes, skip_leading: bool = False):
    """Shardings of a train state: the optimiser state ('opt_state') split over the data axis, the rest
    (parameters, batch-norm averages, buffers, the step) replicated.

    Every device holds the parameters and computes the all-reduced gradient; the optimiser's moments
    and its update are then computed on each device's slice only and the new parameters all-gathered
    (ZeRO stage 1). Replicated, Adam's update (13 FLOPs a parameter in XLA's count) ran in full on
    every device: a fifth of MEG's MNIST-MLP iteration at 8 devices (docs/scaling.md). A leaf is split
    along its longest axis that the device count divides (never the seed axis of a multi-seed state,
    `skip_leading`); a leaf with no such axis stays replicated. The values are the same either way:
    the update is elementwise."""
    n = mesh.shape[DATA_AXIS]

    def one(path, leaf):
        top = getattr(path[0], "key", None) if path else None
        if top != "opt_state":
            return NamedSharding(mesh, P())
        first = 1 if skip_leading else 0
        return NamedSharding(mesh, P(*[None] * first, *_split_spec(leaf.shape[first:], n)))

    return jax.tree_util.tree_map_with_path(one, shapes)


def _split_spec(shape, n: int):
    """The partition of an array of `shape` over n devices: its longest axis that n divides (the first
    of equal ones), or none."""
    axes = [a for a in range(len(shape)) if n > 1 and shape[a] % n == 0]
    if not axes:
        return ()
    spec = [None] * len(shape)
    spec[max(axes, key=lambda a: shape[a])] = DATA_AXIS
    return tuple(spec)


def split_like_optimizer_state(tree):
    """Every array of `tree` constrained to the split state_shardings gives an optimiser-state leaf of
    its shape (inside a vmap over seeds the seed axis is not in the shape, as state_shardings skips
    it); the identity outside a mesh or on one device."""
    n = _traced_devices()
    if n == 1:
        return tree
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, P(*_split_spec(x.shape, n))), tree)


def batch_sharding(mesh: Mesh, batch_axis: int = 1) -> NamedSharding:
    """Shards axis `batch_axis` of a batch (axis 0 counts the n_critic batches of one iteration)."""
    spec = [None] * batch_axis + [DATA_AXIS]
    return NamedSharding(mesh, P(*spec))


def global_batch(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Turns this process's rows into one global array laid out by `sharding`."""
    return jax.make_array_from_process_local_data(sharding, local)


def process_rows(total: int) -> slice:
    """The rows of a global batch of `total` rows that this process contributes: an even, contiguous
    share in process order, which is how make_array_from_process_local_data lays them out on a 1-D mesh
    of jax.devices()."""
    n = jax.process_count()
    if total % n:
        raise ValueError(f"a global batch of {total} rows does not split over {n} processes")
    per = total // n
    p = jax.process_index()
    return slice(p * per, (p + 1) * per)


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def map_rows(fn, x: np.ndarray) -> np.ndarray:
    """fn(x) for a function that maps rows independently, each process computing an even share of the
    rows; the shares are gathered so that every process returns the whole result (evaluation metrics
    are then the same on every process, aggregated over all of them)."""
    n = jax.process_count()
    if n == 1:
        return np.asarray(fn(x))
    from jax.experimental import multihost_utils
    per = -(-len(x) // n)
    p = jax.process_index()
    mine = x[p * per:(p + 1) * per]
    pad = per - len(mine)
    if pad:  # process_allgather needs the same shape everywhere: pad with copies of row 0, dropped below
        mine = np.concatenate([mine, np.repeat(x[:1], pad, axis=0)])
    out = np.asarray(multihost_utils.process_allgather(np.asarray(fn(mine)), tiled=True))
    return out[:len(x)]


# ---------------------------------------------------------------------------------------------
# Multi-process start-up
# ---------------------------------------------------------------------------------------------

def _int_setting(value, env_name: str, flag: str) -> Optional[int]:
    if value is None:
        value = os.environ.get(env_name) or None
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise DistributedError(f"{env_name}={value!r} is not an integer; give {flag} (or {env_name}) as "
                                   "a whole number.") from None
    return int(value)


def _split_address(address: str):
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator_address={address!r} is not of the form HOST:PORT (e.g. "
                               "10.0.0.1:8476 or 127.0.0.1:8476).")
    return host.strip("[]"), int(port)


def _check_port_free(address: str) -> None:
    """Process 0 binds the coordinator's port: say so in one sentence if another program holds it
    (JAX would otherwise abort with a gRPC stack trace)."""
    _, port = _split_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise DistributedError(f"process 0 cannot open the coordinator port {port} of --coordinator_address="
                                   f"{address} ({e.strerror}); choose a free port and give it to every "
                                   "process.") from None


def _wait_for_coordinator(address: str, process_id: int, timeout: float) -> None:
    """Processes other than 0 wait for the coordinator's port to accept connections, so that an
    unreachable coordinator is reported in one sentence instead of a gRPC deadline abort."""
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"process {process_id} could not reach the coordinator at {address} within {timeout:g} s; "
                    "start process 0 (it runs the coordinator) and check --coordinator_address and that "
                    "the port is open between the hosts.") from None
            time.sleep(0.5)


def _abort_after(seconds: float, message: str) -> threading.Timer:
    """A timer that prints `message` and ends the process: JAX's own start-up timeout aborts from C++
    with a misleading 'another task died' message, so ours fires first."""
    def fire():
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(2)
    timer = threading.Timer(max(seconds, 0.0), fire)
    timer.daemon = True
    timer.start()
    return timer


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, enable: bool = False,
               initialization_timeout: float = 300, heartbeat_timeout: int = 60) -> bool:
    """Starts JAX's multi-process runtime when the launch asks for it; call it before any device is used.

    Asked for by `enable` (Cloud TPU pods, Slurm, Open MPI: JAX detects everything itself) or by any of
    coordinator_address / num_processes / process_id, each read from JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID when not given. Returns whether it started the runtime.

    heartbeat_timeout bounds how long the other processes run on after one of them dies or hangs: JAX's
    coordination service then stops every process with a message (a process that crashes outright is
    usually noticed at once). Raises DistributedError, one sentence, for flags that do not fit together,
    an unreachable coordinator or a busy port.
    """
    address = coordinator_address or os.environ.get(ENV_COORDINATOR_ADDRESS) or None
    n = _int_setting(num_processes, ENV_NUM_PROCESSES, "--num_processes")
    pid = _int_setting(process_id, ENV_PROCESS_ID, "--process_id")
    given = {"--coordinator_address": address, "--num_processes": n, "--process_id": pid}
    if not enable and all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing and len(missing) < 3:
        raise DistributedError(
            f"{', '.join(k for k in given if k not in missing)} given without {', '.join(missing)}; give all three "
            "(or none of them, with --distributed, on Cloud TPU, Slurm or Open MPI, where JAX finds them).")
    if n is not None:
        if n < 1:
            raise DistributedError(f"--num_processes={n} must be at least 1.")
        if not 0 <= pid < n:
            raise DistributedError(f"--process_id={pid} must be in 0..{n - 1} for --num_processes={n}.")
        _split_address(address)
    if initialization_timeout <= 0 or heartbeat_timeout <= 0:
        raise DistributedError(f"the initialization timeout ({initialization_timeout}) and heartbeat timeout "
                               f"({heartbeat_timeout}) must be positive numbers of seconds.")
    try:
        # CPU processes exchange their collectives through gloo (the default in recent JAX; older
        # versions had none, so a multi-process CPU run could not reduce across processes).
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:
        pass
    start = time.monotonic()
    if address is not None and pid == 0:
        _check_port_free(address)
    elif address is not None:
        _wait_for_coordinator(address, pid, initialization_timeout)
    who = f"process {pid} of {n}" if n is not None else "this process"
    where = f"the coordinator at {address}" if address else "the coordinator"
    timer = _abort_after(initialization_timeout - (time.monotonic() - start),
                         f"{who}: not every process connected to {where} within {initialization_timeout:g} s; "
                         "start all processes with the same --coordinator_address and --num_processes and "
                         "distinct --process_id values 0..N-1.")
    try:
        jax.distributed.initialize(
            address, n, pid,
            # JAX's own deadline comes after ours (above), whose message says what to check
            initialization_timeout=int(initialization_timeout) + 15,
            heartbeat_timeout_seconds=int(heartbeat_timeout))
    finally:
        timer.cancel()
    return True


def preemption_service_active() -> bool:
    """Whether JAX's preemption sync manager runs (a multi-process runtime with the preemption service
    on, JAX's default): it then owns SIGTERM and agrees with the other processes on a step to stop at."""
    # the flag exists from jax 0.8.2; before it the service always ran with the multi-process runtime
    return jax.distributed.is_initialized() and bool(getattr(jax.config, "jax_enable_preemption_service", True))
