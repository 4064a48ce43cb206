"""Model-agnostic estimators shared by the methods (MCMC, mutual information, penalties)."""
from ebm_jax.estimators.mcmc import langevin_chain, latent_log_prob, mala_chain, mala_log_proposal, mala_step
from ebm_jax.estimators.mutual_information import jsd_mutual_information, shuffle_per_dimension
from ebm_jax.estimators.penalties import input_gradients, zero_centered_gradient_penalty

__all__ = [
    "mala_chain", "mala_step", "mala_log_proposal", "langevin_chain", "latent_log_prob",
    "jsd_mutual_information", "shuffle_per_dimension",
    "input_gradients", "zero_centered_gradient_penalty",
]
