"""The training losses, one per method, with the paper's baselines (Zhang & Boykov, CVPR 2025, Tables 4-5):

    pce   -log sigma[seed] over S                                            scribbles only
    full  dense masks, the upper bound: 'ce+dice' (cross-entropy + soft Dice of the foreground classes,
          what ACDC baselines train with), 'balanced' (cross-entropy weighted by inverse class frequency in
          the batch) or 'ce'
    gd    pce + lam Potts(sigma) / N, straight through autograd: the dense CRF loss (bilinear, dense
          neighbourhood, sigma_rgb 15, sigma_xy 100 on inputs scaled by gd_scale = 0.5, as its authors run
          it), or with gd_neighborhood='nn4' the grid CRF loss
    hard  pce + eta -log sigma[argmax y] over not S, y = the grid CRF energy's discrete labels (bilinear, ce,
          nn4): by α-expansion (hard_method='alpha_expansion', the paper's graph-cut baseline; needs the
          pottsops[graphcut] extra) or, as the variant 'mirror_descent', the relaxed solver and its polish
    soft  pce + eta H(y, sigma) over not S, y = solve(relaxation, unary, neighborhood) (eq. 8)

S: the scribbled pixels, N: the valid (mask True) pixels.  hard and soft weigh their two terms as eq. 8 does:
normalize='weighted' (default) divides eq. 8's sums by their total weight |S| + eta |not S| (a weighted mean,
so the step size is pce's at any eta and pce's learning rate carries over); normalize='pixels' divides them by
the one count N (a gradient about eta times pce's); normalize='terms' makes each term a mean over its own
pixels, which weighs the pseudo-labels |not S| / |S| times less (about 100 times on ACDC) for the same eta.
pce, and gd's scribble term, is partial cross-entropy as usually written: a mean over S.  gd, hard
and soft train on pce alone during the warm-up (TrainConfig.warmup).  Only the public pottsops API is used.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import pottsops

METHODS = ("pce", "full", "gd", "hard", "soft")
FULL_LOSSES = ("ce+dice", "balanced", "ce")


@dataclass
class Regulariser:
    """The pseudo-label problem (soft, hard), the Potts loss of gd, the full-supervision loss."""
    eta: float = 0.3
    lam: float = 6.0
    unary: str = "cce"
    relaxation: str = "cd"
    neighborhood: str = "nn4"
    sigma_rgb: float = 9.0
    sigma_xy: float = None
    solver_iters: int = pottsops.nn.TRAINING_SOLVER_ITERS  # 100: the median gap at 1e-2 (docs/trainer.md)
    normalize: str = "weighted"     # hard and soft: eq. 8's sums / their weight |S| + eta |not S| ("weighted"),
                                     # / N ("pixels") or a mean per term ("terms")
    gd_lam: float = 1e-3             # the dense Potts sum per pixel is ~10^3 times a grid one's
    gd_neighborhood: str = "dense"
    gd_sigma_rgb: float = 15.0
    gd_sigma_xy: float = 100.0       # in pixels of the input; scaled with it
    gd_scale: float = 0.5
    full_loss: str = "ce+dice"
    hard_method: str = "alpha_expansion"  # or "mirror_descent": solve()'s method for hard's labels


def batch_loss(method, logits, batch, reg, warmup=False):
    """(loss, y): y are the pseudo-labels the loss used (None for pce/full/gd)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    logits = logits.float()
    seeds, mask = batch["seeds"], batch["mask"]
    if method == "full":
        return full_supervision_loss(logits, batch["label"], mask, reg.full_loss), None
    if method == "pce" or warmup:
        return partial_cross_entropy(logits, seeds, mask), None
    if method == "gd":
        return _gradient_descent_loss(logits, batch, reg), None
    if method == "hard":
        y = pottsops.solve(logits.detach(), batch["image"], seeds, relaxation="bilinear", unary="ce",
                           neighborhood="nn4", eta=reg.eta, lam=reg.lam, sigma_rgb=reg.sigma_rgb, mask=mask,
                           iters=reg.solver_iters, method=reg.hard_method)
        y = F.one_hot(y.max(1).indices, y.shape[1]).permute(0, 3, 1, 2).to(y.dtype)  # argmax(1), faster
        return _self_labeling(logits, y, seeds, reg.eta, "ce", mask, reg), y
    y = pottsops.solve(logits.detach(), batch["image"], seeds, relaxation=reg.relaxation, unary=reg.unary,
                       neighborhood=reg.neighborhood, eta=reg.eta, lam=reg.lam, sigma_rgb=reg.sigma_rgb,
                       sigma_xy=reg.sigma_xy, mask=mask, iters=reg.solver_iters)
    return _self_labeling(logits, y, seeds, reg.eta, reg.unary, mask, reg), y


def full_supervision_loss(logits, label, mask, kind="ce+dice"):
    """Dense-mask loss over the valid pixels.  Plain cross-entropy on ACDC falls into predicting background
    everywhere (96 % of the pixels), hence the Dice term / class weights."""
    if kind not in FULL_LOSSES:
        raise ValueError(f"full_loss: expected one of {FULL_LOSSES}, got {kind!r}")
    num_classes = logits.shape[1]
    valid = mask & (label < num_classes)   # 255: void / unknown
    targets = label.long().masked_fill(~valid, -100)
    if not valid.any():  # a batch of void crops: nothing to learn from (cross-entropy would give NaN)
        return logits.sum() * 0.0
    if kind == "ce":
        return F.cross_entropy(logits, targets, ignore_index=-100)
    if kind == "balanced":
        counts = torch.bincount(label[valid].long(), minlength=num_classes).float()
        weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), 0.0)
        return F.cross_entropy(logits, targets, weight=weights, ignore_index=-100)
    sigma = torch.softmax(logits, 1) * valid[:, None]
    onehot = F.one_hot(targets.clamp(min=0), num_classes).permute(0, 3, 1, 2) * valid[:, None]
    overlap, total = (sigma * onehot).sum((0, 2, 3)), (sigma + onehot).sum((0, 2, 3))
    dice = (2 * overlap + 1) / (total + 1)
    return F.cross_entropy(logits, targets, ignore_index=-100) + (1 - dice[1:]).mean()


def _gradient_descent_loss(logits, batch, reg):
    seeds, mask = batch["seeds"], batch["mask"]
    sigma = torch.softmax(logits, 1)
    seed_term = partial_cross_entropy(logits, seeds, mask)
    image = batch["image"]
    if pottsops.neighborhoods.as_neighborhood(reg.gd_neighborhood).dense:
        if reg.gd_scale != 1.0:  # rloss's scale_factor: probabilities, image and sigma_xy scaled together
            size = [max(1, round(s * reg.gd_scale)) for s in sigma.shape[2:]]
            sigma = F.interpolate(sigma, size=size, mode="bilinear", align_corners=False)
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            mask = F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        potts = pottsops.potts_energy(sigma, image, relaxation="bilinear", neighborhood="dense",
                                      sigma_rgb=reg.gd_sigma_rgb, sigma_xy=reg.gd_sigma_xy * reg.gd_scale,
                                      mask=mask, reduction="mean")
    else:
        potts = pottsops.potts_energy(sigma, image, relaxation="bilinear", neighborhood=reg.gd_neighborhood,
                                      sigma_rgb=reg.sigma_rgb, mask=mask, reduction="mean")
    return seed_term + reg.gd_lam * potts


def partial_cross_entropy(logits, seeds, mask):
    """-mean_{i in S, mask} log sigma_i[seed_i]: eq. 8 with eta = 0, as a mean over the scribbles."""
    targets = seeds.long().masked_fill((seeds == 255) | ~mask, -100)
    count = (targets >= 0).sum().clamp(min=1)  # a batch without scribbles: 0, not NaN
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum") / count


def _self_labeling(logits, y, seeds, eta, unary, mask, reg):
    return pottsops.self_labeling_loss(logits, y, seeds, eta=eta, unary=unary, mask=mask, normalize=reg.normalize)
