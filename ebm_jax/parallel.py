"""Device mesh and shardings: the global batch is split over a 'data' axis, the state replicated."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 1) -> NamedSharding:
    """Shards axis `batch_axis` of a batch (axis 0 counts the n_critic batches of one iteration)."""
    spec = [None] * batch_axis + [DATA_AXIS]
    return NamedSharding(mesh, P(*spec))


def global_batch(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Turns this process's rows into one global array laid out by `sharding`."""
    return jax.make_array_from_process_local_data(sharding, local)
