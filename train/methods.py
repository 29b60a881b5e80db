"""The training losses, one per method; each term is a mean over the pixels it covers (partial
cross-entropy as usually written, and pottsops.self_labeling_loss(normalize="terms")):

    pce   mean_S -log sigma[seed]                                        scribbles only
    full  mean -log sigma[label]                                         dense masks (upper bound)
    gd    pce + eta mean_{not S} entropy(sigma) + lam Potts(sigma) / N     loss (4), straight through autograd
    hard  pce + eta mean_{not S} -log sigma[argmax y]                    y solved, then rounded
    soft  pce + eta mean_{not S} H(y, sigma)                             y solved by pottsops.solve (eq. 8)

S: the scribbled pixels, N: the valid (mask True) pixels.  gd, hard and soft train on pce alone during
the warm-up epochs.  Only the public pottsops API is used.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import pottsops

METHODS = ("pce", "full", "gd", "hard", "soft")


@dataclass
class Regulariser:
    """The pseudo-label problem and the Potts term of gd (paper defaults)."""
    eta: float = 0.3
    lam: float = 6.0
    unary: str = "cce"
    relaxation: str = "cd"
    neighborhood: str = "nn4"
    sigma_rgb: float = 9.0
    sigma_xy: float = None
    solver_iters: int = 50


def batch_loss(method, logits, batch, reg, warmup=False):
    """(loss, y): y are the pseudo-labels the loss used (None for pce/full/gd)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    logits = logits.float()
    seeds, mask = batch["seeds"], batch["mask"]
    if method == "full":
        targets = batch["label"].masked_fill(~mask, 255)
        return F.cross_entropy(logits, targets, ignore_index=255), None
    if method == "pce" or warmup:
        return _self_labeling(logits, torch.softmax(logits.detach(), 1), seeds, 0.0, "cce", mask), None
    if method == "gd":
        return _gradient_descent_loss(logits, batch, reg), None
    y = pottsops.solve(logits.detach(), batch["image"], seeds, relaxation=reg.relaxation, unary=reg.unary,
                       neighborhood=reg.neighborhood, eta=reg.eta, lam=reg.lam, sigma_rgb=reg.sigma_rgb,
                       sigma_xy=reg.sigma_xy, mask=mask, iters=reg.solver_iters)
    if method == "hard":
        y = F.one_hot(y.argmax(1), y.shape[1]).permute(0, 3, 1, 2).to(y.dtype)
        return _self_labeling(logits, y, seeds, reg.eta, "ce", mask), y
    return _self_labeling(logits, y, seeds, reg.eta, reg.unary, mask), y


def _gradient_descent_loss(logits, batch, reg):
    seeds, mask = batch["seeds"], batch["mask"]
    sigma = torch.softmax(logits, 1)
    seed_term = _self_labeling(logits, sigma, seeds, 0.0, "cce", mask)
    unlabeled = mask & (seeds == 255)
    entropy = -(sigma * torch.log_softmax(logits, 1)).sum(1)[unlabeled]
    potts = pottsops.potts_energy(sigma, batch["image"], relaxation=reg.relaxation, neighborhood=reg.neighborhood,
                                  sigma_rgb=reg.sigma_rgb, sigma_xy=reg.sigma_xy, mask=mask, reduction="mean")
    return seed_term + reg.eta * (entropy.mean() if entropy.numel() else 0.0) + reg.lam * potts


def _self_labeling(logits, y, seeds, eta, unary, mask):
    return pottsops.self_labeling_loss(logits, y, seeds, eta=eta, unary=unary, mask=mask, normalize="terms")
