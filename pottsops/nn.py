"""Drop-in loss modules for an existing training loop.

    PottsLoss             weight * potts_energy(probs, image, ...): any relaxation and neighbourhood
    DenseCRFLoss          rloss's DenseCRFLoss (Tang et al., ECCV 2018): same constructor, forward arguments
                          and value, computed by pottsops' lattice on any device
    GatedCRFLoss          the Gated CRF loss (Obukhov et al., 2019): the same kernel description
                          (weight, xy, rgb) and radius, the same normalisation, through the window kernels
    SoftSelfLabelingLoss  soft self-labeling (Zhang & Boykov, CVPR 2025): y = pottsops.solve(...) without
                          gradient, then the network loss of eq. 8

None of them holds parameters or buffers (nothing to synchronise under DDP).  docs/migrating.md maps the
published losses' arguments onto these.
"""
import torch
import torch.nn.functional as F

from pottsops import _checks
from pottsops.lattice import prepare_filter
from pottsops.dense import quadratic_form
from pottsops.neighborhoods import window
from pottsops.potts import REDUCTIONS, affinity, named_energy
from pottsops.solver import solve
from pottsops.unary import NORMALIZATIONS, self_labeling_loss

__all__ = ["PottsLoss", "DenseCRFLoss", "GatedCRFLoss", "SoftSelfLabelingLoss"]


class PottsLoss(torch.nn.Module):
    """weight * potts_energy(probs, image, relaxation=, neighborhood=, ...).

    forward(probs (B, K, H, W) on the simplex, image (B, C, H, W) or None, mask (B, H, W) bool or None).
    reduction: 'mean' (default: the sum over pairs / valid pixels), 'sum' or 'none' (per image).
    """

    def __init__(self, relaxation="cd", neighborhood="nn4", sigma_rgb=9.0, sigma_xy=None, weight=1.0,
                 reduction="mean", backend="auto"):
        super().__init__()
        _checks.check_number("weight", weight)
        _checks.check_choice("reduction", reduction, REDUCTIONS)
        self.relaxation, self.neighborhood, self.sigma_rgb, self.sigma_xy = relaxation, neighborhood, sigma_rgb, sigma_xy
        self.weight, self.reduction, self.backend = float(weight), reduction, backend

    def forward(self, probs, image=None, mask=None):
        _checks.check_labels("probs", probs)
        _checks.check_probabilities("probs", probs)
        return self.weight * named_energy("probs", probs, image, relaxation=self.relaxation,
                                          neighborhood=self.neighborhood, sigma_rgb=self.sigma_rgb,
                                          sigma_xy=self.sigma_xy, mask=mask, reduction=self.reduction,
                                          backend=self.backend)

    def extra_repr(self):
        return (f"relaxation={self.relaxation!r}, neighborhood={self.neighborhood!r}, sigma_rgb={self.sigma_rgb}, "
                f"sigma_xy={self.sigma_xy}, weight={self.weight}, reduction={self.reduction!r}")


class DenseCRFLoss(torch.nn.Module):
    """rloss's dense CRF loss: weight * -sum_k S_k^T W S_k / B on inputs scaled by scale_factor.

    W_ij = exp(-|p_i - p_j|^2 / (2 (sigma_xy * scale_factor)^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)), all pairs
    of an image including i = j; S = segmentations * ROIs.  forward(images (B, 3, H, W) in 0..255,
    segmentations (B, K, H, W) softmax output, ROIs (B, H, W) 0/1) as in rloss: images resized by nearest,
    segmentations bilinearly, ROIs by nearest.  The value has no constant (it is negative); its gradient
    -2 weight W S / B.  One lattice filtering for all K channels; the backward pass filters nothing.
    """

    def __init__(self, weight, sigma_rgb, sigma_xy, scale_factor):
        super().__init__()
        _checks.check_number("weight", weight)
        _checks.check_positive("sigma_rgb", sigma_rgb)
        _checks.check_positive("sigma_xy", sigma_xy)
        _checks.check_positive("scale_factor", scale_factor)
        self.weight, self.sigma_rgb, self.sigma_xy = float(weight), float(sigma_rgb), float(sigma_xy)
        self.scale_factor = float(scale_factor)

    def forward(self, images, segmentations, ROIs):
        _checks.check_labels("segmentations", segmentations)
        _checks.check_probabilities("segmentations", segmentations)  # raw logits give a meaningless value
        _checks.check_image("images", images, "segmentations", segmentations)
        _checks.check_float("ROIs", ROIs)
        _checks.check_like("ROIs", ROIs, (segmentations.shape[0], *segmentations.shape[2:]),
                           "batch and size of segmentations")
        segmentations = segmentations.float()
        images, ROIs = images.float(), ROIs.float()
        H, W = segmentations.shape[2:]
        if min(H, W) * self.scale_factor < 1:
            raise ValueError(f"scale_factor: {self.scale_factor} shrinks the {H} x {W} input below one pixel")
        if self.scale_factor != 1.0:
            images = F.interpolate(images, scale_factor=self.scale_factor)
            segmentations = F.interpolate(segmentations, scale_factor=self.scale_factor, mode="bilinear",
                                          align_corners=False)
            ROIs = F.interpolate(ROIs[:, None], scale_factor=self.scale_factor)[:, 0]
        lattice_filter = prepare_filter(images, self.sigma_xy * self.scale_factor, self.sigma_rgb)
        forms = quadratic_form(segmentations * ROIs[:, None], lattice_filter)  # one filtering, none in backward
        return self.weight * -forms.sum() / max(segmentations.shape[0], 1)  # an empty batch: 0, not 0/0

    def extra_repr(self):
        return f"weight={self.weight}, sigma_rgb={self.sigma_rgb}, sigma_xy={self.sigma_xy}, scale_factor={self.scale_factor}"


class GatedCRFLoss(torch.nn.Module):
    """The Gated CRF loss with the Potts compatibility:

        sum_i sum_{j in the (2 radius + 1)^2 window of i, j != i} k_ij (1 - y_i . y_j) / denominator,
        k_ij = sum over kernels_desc of weight exp(-|xy_i - xy_j|^2 / (2 xy^2) - |I_i - I_j|^2 / (2 rgb^2))

    kernels_desc: [{'weight': w, 'xy': sigma_xy, 'rgb': sigma_rgb}, ...] ('rgb' left out: a spatial-only
    kernel), as the published loss takes them; sigmas in pixels of the prediction and in image units.
    Each ordered pair counts (every unordered pair twice), the denominator is B H W, or the number of
    mask-True pixels with a mask (which, as the published mask_src and mask_dst together, drops every pair
    touching a masked-out pixel).  Border pairs: only pairs inside the image count.  The published loss
    without a mask also sums kernel values towards its zero padding outside the image, a constant of the
    image alone: values differ by it, gradients are equal.
    forward(y_hat_softmax (B, K, H, W), image (B, C, H, W) at the prediction's size or None when no kernel
    has 'rgb', mask (B, H, W) bool or None).
    """

    def __init__(self, kernels_desc, kernels_radius):
        super().__init__()
        if not isinstance(kernels_desc, (list, tuple)) or not kernels_desc:
            raise ValueError(f"kernels_desc: expected a non-empty list of dicts, got {kernels_desc!r}")
        for index, desc in enumerate(kernels_desc):
            if not isinstance(desc, dict) or "xy" not in desc or set(desc) - {"weight", "xy", "rgb"}:
                raise ValueError(f"kernels_desc[{index}]: expected a dict with 'xy' and optionally 'weight' and "
                                 f"'rgb' (other modalities: divide each by its sigma, concatenate them into the "
                                 f"image and give 'rgb': 1.0; docs/migrating.md), got {desc!r}")
            _checks.check_number(f"kernels_desc[{index}]['weight']", desc.get("weight", 1.0))
            _checks.check_positive(f"kernels_desc[{index}]['xy']", desc["xy"])
            if "rgb" in desc:
                _checks.check_positive(f"kernels_desc[{index}]['rgb']", desc["rgb"])
        self.kernels_desc = [dict(desc) for desc in kernels_desc]
        self.neighborhood = window(kernels_radius)   # checks the radius
        self.kernels_radius = kernels_radius
        self._warned, self._checks_left = False, _checks.SCALE_CHECKS

    def forward(self, y_hat_softmax, image=None, mask=None, *published_arguments):
        if isinstance(image, (list, tuple)) or published_arguments:
            raise TypeError("GatedCRFLoss: called with the published forward(y_hat_softmax, kernels_desc, "
                            "kernels_radius, sample, height_input, width_input, ...); here the kernels go to the "
                            "constructor: GatedCRFLoss(kernels_desc, kernels_radius)(y_hat_softmax, image, mask), "
                            "image = sample['rgb'] resized to the prediction (docs/migrating.md)")
        _checks.check_labels("y_hat_softmax", y_hat_softmax)
        _checks.check_probabilities("y_hat_softmax", y_hat_softmax)
        if image is None and any("rgb" in desc for desc in self.kernels_desc):
            raise ValueError("image: a kernel of kernels_desc has 'rgb', so forward needs the image")
        total = 0.0
        for desc in self.kernels_desc:
            energy = named_energy("y_hat_softmax", y_hat_softmax, image if "rgb" in desc else None,
                                  relaxation="bilinear", neighborhood=self.neighborhood,
                                  sigma_rgb=desc.get("rgb", 1.0), sigma_xy=desc["xy"], mask=mask, reduction="sum")
            if "rgb" in desc:
                self._warn_if_no_weight(energy, image, desc, mask)
            total = total + desc.get("weight", 1.0) * energy
        B, _, H, W = y_hat_softmax.shape
        count = mask.sum().clamp(min=1) if mask is not None else max(B * H * W, 1)  # no pixels: 0, not 0/0
        return 2.0 * total / count   # ordered pairs: each unordered pair twice

    def _warn_if_no_weight(self, energy, image, desc, mask):
        """A kernel whose weights underflow to 0 on every pair (an 'rgb' far below the image's colour steps,
        e.g. 0.1 for 0..255 colours) makes the loss 0 and trains nothing: warn once.  Looked at only where
        the energy is exactly 0, in the first calls of a process (as the image-scale check)."""
        if self._warned or torch.compiler.is_compiling() or self._checks_left <= 0:
            return
        self._checks_left -= 1
        if float(energy.detach()) != 0.0:
            return
        weights = affinity(image.detach(), self.neighborhood, sigma_rgb=desc["rgb"], sigma_xy=desc["xy"], mask=mask)
        if weights.numel() and float(weights.max()) == 0.0:
            self._warned = True
            _checks.warn_at_caller(f"GatedCRFLoss: the kernel {desc} weighs every pixel pair 0 on this image (its 'rgb' is in "
                          f"the image's units: for 0..255 colours try 10-20), so the loss is 0 and trains nothing.")

    def extra_repr(self):
        return f"kernels_desc={self.kernels_desc}, kernels_radius={self.kernels_radius}"


TRAINING_SOLVER_ITERS = 100


class SoftSelfLabelingLoss(torch.nn.Module):
    """Soft self-labeling: y = pottsops.solve(logits, image, seeds, ...) (no gradient), then

        loss = ( -sum_{i in S} log sigma_i[seed_i] + eta sum_{i not in S} H(y_i, sigma_i) ) / (|S| + eta |not S|)

    eq. 8's sums over their total weight (normalize='weighted', the default): the step size of a mean
    whatever eta is, so pCE's learning rate carries over.  normalize='pixels' divides by the number of valid
    pixels instead (a gradient about eta times smaller), 'terms' makes each term a mean over its own pixels
    (pottsops.self_labeling_loss).
    forward(logits (B, K, H, W), image (B, C, H, W), seeds (B, H, W) class ids / ignore_index, mask (B, H, W)
    bool or None, return_labels=False) -> loss, or (loss, y) with return_labels=True.  solver_options go to
    solve() (tol, lr, levels, sigma_xy, weights, dense_method, backend, ...); iters defaults to
    TRAINING_SOLVER_ITERS = 100, the steps per training step at which the median gap to the best known energy
    reached 1e-2 on a partly trained network's logits (docs/trainer.md; solve() alone runs up to 300).  The
    trainer (`python -m train`) uses the same defaults.  The solve runs eagerly: under torch.compile the graph
    breaks around it.
    """

    def __init__(self, eta=0.3, lam=6.0, relaxation="cd", unary="cce", neighborhood="nn4", sigma_rgb=9.0,
                 normalize="weighted", ignore_index=255, **solver_options):
        super().__init__()
        _checks.check_number("eta", eta)
        _checks.check_number("lam", lam)
        _checks.check_choice("normalize", normalize, NORMALIZATIONS)
        self.eta, self.lam, self.relaxation, self.unary = float(eta), float(lam), relaxation, unary
        self.neighborhood, self.sigma_rgb, self.normalize = neighborhood, sigma_rgb, normalize
        self.ignore_index, self.solver_options = ignore_index, {"iters": TRAINING_SOLVER_ITERS, **solver_options}

    @torch.compiler.disable
    def pseudo_labels(self, logits, image, seeds, mask=None):
        """y = pottsops.solve(...) for these logits, without gradient."""
        with torch.no_grad():
            return solve(logits.detach().float(), image, seeds, relaxation=self.relaxation, unary=self.unary,
                         neighborhood=self.neighborhood, eta=self.eta, lam=self.lam, sigma_rgb=self.sigma_rgb,
                         mask=mask, ignore_index=self.ignore_index, **self.solver_options)

    def forward(self, logits, image, seeds, mask=None, return_labels=False):
        _checks.check_labels("logits", logits)  # before .detach(): a model's dict output is named as such
        y = self.pseudo_labels(logits, image, seeds, mask)
        loss = self_labeling_loss(logits, y, seeds, eta=self.eta, unary=self.unary, ignore_index=self.ignore_index,
                                  mask=mask, normalize=self.normalize)
        return (loss, y) if return_labels else loss

    def extra_repr(self):
        options = "".join(f", {k}={v!r}" for k, v in self.solver_options.items())
        return (f"eta={self.eta}, lam={self.lam}, relaxation={self.relaxation!r}, unary={self.unary!r}, "
                f"neighborhood={self.neighborhood!r}, sigma_rgb={self.sigma_rgb}, normalize={self.normalize!r}{options}")
