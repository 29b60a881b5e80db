"""Unary terms linking network logits to soft pseudo-labels, and the self-labeling loss (paper eq. 8)."""
import warnings

import torch
import torch.nn.functional as F

from pottsops import _backend, _checks, reference
from pottsops.names import unary_index, unary_name

REDUCTIONS = ("mean", "sum", "none")
UNARY_BACKENDS = ("cuda", "triton", "cpu", "reference")


def _per_pixel(impl, logits, y, mask, kind, eps):
    if impl == "reference":
        return reference.unary_loss(logits, y, mask, unary_name(kind), eps)
    args = (logits, y, mask, unary_index(kind), eps)
    if impl == "triton":
        from pottsops.triton import unary as triton_unary
        return triton_unary.unary_loss(*args)
    return torch.ops.pottsops.unary_loss(*args)


def unary(logits, y, unary="cce", *, mask=None, eps=1e-8, reduction="mean", backend="auto", kind=None):
    """H(y_i, softmax(logits)_i) per pixel, with gradients to logits and y (softmax fused).

    logits: (B, K, H, W) network outputs z; y: (B, K, H, W) soft labels (promoted to a common dtype).
    unary: 'cce' (collision CE, -log(sigma.y + eps)), 'ce' (-sum y log sigma) or 'rce'
        (-sum sigma log(y + eps)); long names 'collision_ce', 'cross_entropy', 'reverse_ce' too.  The same
        name as solve()'s and self_labeling_loss()'s argument; kind= is its old name (deprecated).
    mask: (B, H, W) bool; pixels with mask False contribute 0.
    reduction: 'mean' (over valid pixels), 'sum', or 'none' (per pixel, (B, H, W)).

    >>> loss = pottsops.unary(logits, y, "cce")
    """
    _checks.check_labels("logits", logits)
    _checks.check_float("y", y)
    _checks.check_like("y", y, logits.shape, "the shape of logits")
    _checks.check_device("y", y, "logits", logits)
    _checks.check_mask(mask, "logits", logits)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    _checks.check_number("eps", eps)
    if kind is not None:
        warnings.warn("pottsops.unary: kind= is now called unary= (the name solve() uses); kind= will be removed",
                      FutureWarning, stacklevel=2)
        unary = kind
    unary_name(unary, "unary")
    dtype = torch.promote_types(logits.dtype, y.dtype)
    logits, y = logits.to(dtype), y.to(dtype)
    impl = _backend.resolve(backend, logits.device, UNARY_BACKENDS, "unary")
    loss = _per_pixel(impl, logits, y, mask, unary, float(eps))
    if reduction == "none":
        return loss
    loss = reference.widen(loss)  # sums in float32 or float64: fp16's range ends at 65504
    if reduction == "sum":
        return loss.sum()
    count = mask.sum().clamp(min=1) if mask is not None else max(1, loss.numel())
    return loss.sum() / count  # an empty mask: 0


NORMALIZATIONS = ("weighted", "pixels", "terms")


def self_labeling_loss(logits, y, seeds, eta=0.3, unary="cce", ignore_index=255, mask=None, eps=1e-8,
                       normalize="weighted", backend="auto"):
    """Network loss of soft self-labeling (paper eq. 8 without the Potts term, constant for the network).

    normalize='weighted' (default): eq. 8's two sums divided by their total weight, as a weighted
    cross-entropy's mean is,

        ( -sum_{i in S} log sigma_i[seed_i]  +  eta sum_{i not in S} H(y_i, sigma_i) ) / ( |S| + eta |not S| )

    so eq. 8's relative weights are kept and the step size is a mean's whatever eta is: eta = 0 is partial
    cross-entropy, eta = 1 a mean over every valid pixel, and a user coming from pCE keeps pCE's learning
    rate (under 'pixels' the gradient shrinks about eta-fold).

    normalize='pixels' (eq. 8's sums divided by the number N of valid pixels, mask True):

        ( -sum_{i in S} log sigma_i[seed_i]  +  eta sum_{i not in S} H(y_i, sigma_i) ) / N

    normalize='terms' (each term a mean over its own pixels, as partial cross-entropy is usually written):

        -mean_{i in S} log sigma_i[seed_i]  +  eta mean_{i not in S} H(y_i, sigma_i)

    S: the scribbled pixels (seeds != ignore_index), counted where mask is True.  seeds: (B, H, W) integer
    class ids, ignore_index elsewhere.  With normalize='pixels', add lam * potts_energy(y, ...,
    reduction="mean") for the full objective in the same normalisation.  Nothing to weigh (no valid pixel, or
    no scribble and eta = 0) gives 0.

    >>> loss = pottsops.self_labeling_loss(model(x), y.detach(), seeds)
    """
    _checks.check_labels("logits", logits)
    _checks.check_seeds(seeds, "logits", logits, ignore_index)
    _checks.check_mask(mask, "logits", logits)
    _checks.check_choice("normalize", normalize, NORMALIZATIONS)
    _checks.check_number("eta", eta)
    _checks.check_number("eps", eps)
    seeded = seeds != ignore_index
    valid = mask if mask is not None else torch.ones_like(seeded)
    targets = torch.where(seeded & valid, seeds.long(), -100)
    seed_term = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    unlabeled = valid & ~seeded
    unary_term = unary_loss(logits, y, unary, mask=unlabeled, eps=eps, reduction="sum", backend=backend).float()
    if normalize == "terms":
        return seed_term / (seeded & valid).sum().clamp(min=1) + eta * unary_term / unlabeled.sum().clamp(min=1)
    if normalize == "weighted":
        weight = (seeded & valid).sum() + eta * unlabeled.sum()
        # no weight at all (nothing valid, or eta = 0 without scribbles): the sums are 0 too; 0, not 0/0
        return (seed_term + eta * unary_term) / torch.where(weight > 0, weight, 1.0)
    return (seed_term + eta * unary_term) / valid.sum().clamp(min=1)


unary_loss = unary  # the name self_labeling_loss uses, where its argument `unary` shadows the function
