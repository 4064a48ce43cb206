"""Jensen-Shannon mutual-information estimator (Hjelm et al. 2018) used by MEG, Eq. 7."""
import jax
import jax.numpy as jnp


def shuffle_per_dimension(key: jax.Array, z: jax.Array) -> jax.Array:
    """Independent permutation of the batch axis for every latent dimension (MEG Algorithm 1).

    The result has the same marginal of each coordinate but breaks the pairing with G(z), so
    (G(z), shuffled z) are samples of the product of marginals. (The reference code permutes whole
    rows, which also breaks the pairing; the per-dimension shuffle is what the paper specifies.)
    """
    flat = z.reshape(z.shape[0], -1)
    keys = jax.random.split(key, flat.shape[1])
    cols = jax.vmap(lambda k, c: jax.random.permutation(k, c), in_axes=(0, 1), out_axes=1)(keys, flat)
    return cols.reshape(z.shape)


def jsd_mutual_information(t_joint: jax.Array, t_marginal: jax.Array) -> jax.Array:
    """I_JSD = E_joint[-softplus(-T)] - E_marginal[softplus(T)]   (MEG Eq. 7).

    The generator and the statistics network both maximise it; their loss is its negative,
    L_H = mean softplus(-T_joint) + mean softplus(T_marginal) (Algorithm 1, written with the sign
    that makes it a binary cross-entropy). The reference code's BCEWithLogits averages over the 2m
    concatenated pairs, i.e. half of L_H; the optimum is the same.
    """
    return jnp.mean(-jax.nn.softplus(-t_joint)) - jnp.mean(jax.nn.softplus(t_marginal))
