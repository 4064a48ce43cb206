"""PyTorch re-statements of the official toy iterations, for side-by-side speed (bench/peers.py).

Each peer does, per iteration, exactly the work of the official script's training loop at its sizes
(the graph it builds, the passes it runs, the optimiser steps), minus the data generation: the batch
is drawn from a pre-generated tensor, where the official scripts build it in Python every step (the
EBM-BB toy script loops over 1000 points in numpy per batch), so the peers here are, if anything,
faster than the official code. Nothing is timed inside this module; bench/peers.py times `step()`.

MEG (ritheshkumar95/energy_based_generative_models, scripts/train/ebm_toy.py with its functions.py and
networks/toy.py): batch 256, latent 2, 3x512 MLPs for the energy (LeakyReLU 0.2), the generator (ReLU)
and the statistics network (LeakyReLU 0.2, on [x, z]); per iteration one generator + statistics-network
step (E(G(z)) and DeepInfoMax's BCE on the 2B concatenated pairs) and 5 energy steps, each with E on
real data, E on detached G(z), and the score penalty ||grad_x E(x)||^2 (a second forward on the real
batch with create_graph, as score_penalty does), lambda 0.1, Adam(1e-4, (0.5, 0.9)). mcmc_iters = 0,
so z ~ N(0, I).

EBM-BB and EBM-0GP (gengcong940126/EBM-BB, train/train_toy.py): batch 200, latent 2, energy
2-100-100-1 with PReLU and spectral_norm on every Linear plus Linear(1, 1, bias=False); generator
2-100-100-2 with Linear, PReLU, BatchNorm1d, whose Jacobian the reference gets analytically from
stochman's nnj layers (here: the same forward-mode product, layer by layer); Adam(betas (0, 0.9),
eps 1e-6), lr 2e-4; one critic and one generator step per iteration.
  EBM-BB critic: E(x), E(G(z)) (G in train mode, not detached, as the reference), grad_x E(G(z)) with
  create_graph, then compute_gp: G in eval mode with its Jacobian J, 1/2 slogdet(J^T J), the gradient
  of -log p_g(G(z)) w.r.t. z with create_graph, a Gaussian probe v; loss mean(E(x) - E(G(z))) +
  relu(c * 0.5 mean((grad_x E . J v - grad(-log p_g) . v)^2) - thre). Generator: E(G(z)) minus
  d * mean log s_min(J) with J from an eval-mode pass and s_min from torch.linalg.svdvals (the
  reference's torch.svd(J).S[:, -1]).
  EBM-0GP critic: E(x) with grad_x E(x) (create_graph) for the zero-centred penalty, E(G(z).detach()).
  Generator: the train-mode pass with its Jacobian, E(G(z)) - d * mean log s_min(J).
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # the reference uses torch.nn.utils.spectral_norm (one power iteration per forward in train mode)
    from torch.nn.utils.parametrizations import spectral_norm
except ImportError:  # older torch
    from torch.nn.utils import spectral_norm


def _toy_data(n: int, seed: int) -> torch.Tensor:
    """25 Gaussians as the reference toy scripts scale them (std 0.05 around a 5x5 grid of spacing 2, / 2.828)."""
    rng = np.random.default_rng(seed)
    centres = np.array([(2.0 * i, 2.0 * j) for i in range(-2, 3) for j in range(-2, 3)])
    x = centres[rng.integers(0, 25, n)] + 0.05 * rng.normal(size=(n, 2))
    return torch.from_numpy((x / 2.828).astype(np.float32))


class _Batches:
    def __init__(self, batch: int, seed: int = 0):
        self.data = _toy_data(100_000, seed)
        self.batch = batch
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        idx = torch.randint(0, len(self.data), (self.batch,), generator=self.gen)
        return self.data[idx]


# ---------------------------------------------------------------------------------------------------
# MEG
# ---------------------------------------------------------------------------------------------------
def _mlp(sizes, act):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class MEGPeer:
    name = "meg"

    def __init__(self, dim: int = 512, batch: int = 256, z_dim: int = 2, n_critic: int = 5, lamda: float = 0.1):
        torch.manual_seed(0)
        lrelu = lambda: nn.LeakyReLU(0.2, inplace=True)
        self.netE = _mlp([2, dim, dim, dim, 1], lrelu)
        self.netG = _mlp([z_dim, dim, dim, dim, 2], lambda: nn.ReLU(True))
        self.netH = _mlp([2 + z_dim, dim, dim, dim, 1], lrelu)
        params = {"lr": 1e-4, "betas": (0.5, 0.9)}
        self.optE = torch.optim.Adam(self.netE.parameters(), **params)
        self.optG = torch.optim.Adam(self.netG.parameters(), **params)
        self.optH = torch.optim.Adam(self.netH.parameters(), **params)
        self.batches = _Batches(batch)
        self.batch, self.z_dim, self.n_critic, self.lamda = batch, z_dim, n_critic, lamda
        self.label = torch.zeros(2 * batch)
        self.label[:batch] = 1.0

    def _energy(self, x):
        return self.netE(x).squeeze(-1)

    def _train_generator(self):
        self.netG.zero_grad()
        self.netH.zero_grad()
        z = torch.randn(self.batch, self.z_dim)
        x_fake = self.netG(z)
        d_fake = self._energy(x_fake).mean()
        d_fake.backward(retain_graph=True)
        z_bar = z[torch.randperm(self.batch)]
        t = self.netH(torch.cat([torch.cat([x_fake, x_fake], 0), torch.cat([z, z_bar], 0)], -1)).squeeze(-1)
        F.binary_cross_entropy_with_logits(t, self.label).backward()
        self.optG.step()
        self.optH.step()

    def _train_energy(self, x_real):
        self.netE.zero_grad()
        self._energy(x_real).mean().backward()
        z = torch.randn(self.batch, self.z_dim)
        x_fake = self.netG(z).detach()
        (-self._energy(x_fake).mean()).backward()
        x = x_real.clone().requires_grad_(True)       # score_penalty: a second forward on the real batch
        e = self._energy(x)
        score = torch.autograd.grad(e, x, torch.ones_like(e), create_graph=True, retain_graph=True)[0]
        (self.lamda * (score.norm(2, dim=1) ** 2).mean()).backward()
        self.optE.step()

    def step(self):
        self._train_generator()
        for _ in range(self.n_critic):
            self._train_energy(self.batches.next())


# ---------------------------------------------------------------------------------------------------
# EBM-BB / EBM-0GP
# ---------------------------------------------------------------------------------------------------
class Disc(nn.Module):
    """The reference toy energy: spectrally normalised 2-100-100-1 PReLU MLP times a Linear(1, 1)."""

    def __init__(self, dim: int = 100):
        super().__init__()
        self.main = nn.Sequential(spectral_norm(nn.Linear(2, dim)), nn.PReLU(),
                                  spectral_norm(nn.Linear(dim, dim)), nn.PReLU(),
                                  spectral_norm(nn.Linear(dim, 1)))
        self.l = nn.Linear(1, 1, bias=False)

    def forward(self, x):
        return self.l(self.main(x))


class JacobianGenerator(nn.Module):
    """Linear, PReLU, BatchNorm1d (x2), Linear; forward(z, jacobian=True) also returns J (B, D, d)
    propagated layer by layer, as stochman's nnj layers do (BN as the per-sample affine map of the
    statistics it normalises with: the batch's in train mode, the running ones in eval mode)."""

    def __init__(self, z_dim: int = 2, dim: int = 100, out: int = 2):
        super().__init__()
        self.lin = nn.ModuleList([nn.Linear(z_dim, dim), nn.Linear(dim, dim), nn.Linear(dim, out)])
        self.act = nn.ModuleList([nn.PReLU(), nn.PReLU()])
        self.bn = nn.ModuleList([nn.BatchNorm1d(dim), nn.BatchNorm1d(dim)])

    def forward(self, z, jacobian: bool = False):
        h = z
        jac = torch.eye(z.shape[1]).expand(z.shape[0], -1, -1) if jacobian else None
        for i in range(3):
            lin = self.lin[i]
            h = lin(h)
            if jacobian:
                jac = torch.matmul(lin.weight, jac)                    # (B, out, d)
            if i == 2:
                break
            a = self.act[i]
            if jacobian:
                jac = jac * torch.where(h > 0, torch.ones_like(h), a.weight.expand_as(h)).unsqueeze(-1)
            h = a(h)
            bn = self.bn[i]
            if bn.training:
                var = h.var(0, unbiased=False)
            else:
                var = bn.running_var
            if jacobian:
                jac = jac * (bn.weight / torch.sqrt(var + bn.eps)).unsqueeze(-1)
            h = bn(h)
        return (h, jac) if jacobian else h


class _BoundsPeer:
    def __init__(self, batch: int = 200, z_dim: int = 2, lr: float = 2e-4):
        torch.manual_seed(0)
        self.disc = Disc()
        self.gen = JacobianGenerator(z_dim)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.0, 0.9), eps=1e-6)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=lr, betas=(0.0, 0.9), eps=1e-6)
        self.batches = _Batches(batch)
        self.batch, self.d = batch, z_dim

    def _generator_step(self, jacobian_in_train_mode: bool):
        z = torch.randn(self.batch, self.d, requires_grad=True)
        if jacobian_in_train_mode:   # EBM-0GP: fake, J = gen(z, True)
            fake, jac = self.gen(z, True)
        else:                        # EBM-BB: fake = gen(z); J from compute_entropy_mins_eval (eval mode)
            fake = self.gen(z)
            self.gen.eval()
            _, jac = self.gen(z, True)
            self.gen.train()
        d_fake = self.disc(fake)
        entropy = (self.d * torch.log(torch.linalg.svdvals(jac)[:, -1:])).mean()
        g_loss = d_fake.mean() - entropy
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()


class EBMBBPeer(_BoundsPeer):
    name = "ebm_bb"

    def __init__(self, c: float = 0.003, thre: float = 0.0, **kw):
        super().__init__(**kw)
        self.c, self.thre = c, thre

    def _compute_gp(self, z):
        self.gen.eval()
        logpz = -0.5 * (z ** 2).sum(1) - 0.5 * self.d * math.log(2 * math.pi)
        _, jac = self.gen(z, True)
        v = torch.randn(z.shape)
        jtj = torch.bmm(jac.transpose(-2, -1), jac)
        logp_gz = logpz - 0.5 * torch.linalg.slogdet(jtj)[1]
        deri = torch.autograd.grad(-logp_gz, z, torch.ones_like(logp_gz), create_graph=True)[0]
        gp = (deri * v).sum(-1)
        jv = torch.bmm(jac, v.unsqueeze(-1)).squeeze(-1)
        self.gen.train()
        return jv, gp

    def step(self):
        x = self.batches.next()
        z = torch.randn(self.batch, self.d, requires_grad=True)
        g_z = self.gen(z)
        d_real, d_fake = self.disc(x), self.disc(g_z)
        grads = torch.autograd.grad(d_fake, g_z, torch.ones_like(d_fake), create_graph=True)[0]
        jv, gp = self._compute_gp(z)
        gp_loss = (((grads * jv.detach()).sum(-1) - gp.detach()) ** 2).mean() * 0.5
        d_loss = (d_real - d_fake).mean() + F.relu(self.c * gp_loss - self.thre)
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        self._generator_step(jacobian_in_train_mode=False)


class EBM0GPPeer(_BoundsPeer):
    name = "ebm_0gp"

    def __init__(self, gp_weight: float = 0.001, **kw):
        super().__init__(**kw)
        self.gp_weight = gp_weight

    def step(self):
        x = self.batches.next().requires_grad_(True)
        z = torch.randn(self.batch, self.d)
        g_z = self.gen(z)
        d_real, d_fake = self.disc(x), self.disc(g_z.detach())
        grads = torch.autograd.grad(d_real, x, torch.ones_like(d_real), create_graph=True)[0]
        gp_loss = (grads.flatten(1).norm(2, dim=1) ** 2).mean()
        d_loss = (d_real - d_fake).mean() + gp_loss * self.gp_weight
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        self._generator_step(jacobian_in_train_mode=True)


PEERS = {"meg": MEGPeer, "ebm_bb": EBMBBPeer, "ebm_0gp": EBM0GPPeer}
