"""The baselines the benchmarks measure pottsops against, written as users write them today: the unfold window
loss (the Gated CRF loss's way), the shift-and-subtract nn4 loss, rloss's per-class dense loop, and the plain
Adam solver over the reference energy (optionally under torch.compile)."""
import torch
import torch.nn.functional as F

import pottsops

def unfold_window_potts(y, image, neighborhood, sigma_rgb=9.0):
    """The bilinear window Potts energy the way unfold-based losses (e.g. the Gated CRF loss) compute it:
    every pixel's (2r+1)^2 neighbours of y and of the image are materialised with F.unfold, then
    sum_ij w_ij (1 - y_i . y_j) / 2 over the full window (each pair counted from both ends)."""
    B, K, H, W = y.shape
    radius = max(abs(dx) for _, dx in neighborhood.offsets)
    if neighborhood.offsets != pottsops.window(radius).offsets:
        raise ValueError(f"neighborhood: the unfold baseline needs window(radius), got {neighborhood}")
    size = 2 * radius + 1
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    d = torch.arange(-radius, radius + 1, device=y.device, dtype=acc)
    dist2 = (d[:, None] ** 2 + d[None, :] ** 2).flatten()
    spatial = torch.exp(-dist2 / (2.0 * neighborhood.default_sigma_xy ** 2))
    spatial[dist2 == 0] = 0  # not a pixel's own pair
    inside = F.unfold(torch.ones(1, 1, H, W, device=y.device, dtype=acc), size, padding=radius).view(1, size * size, H, W)
    image = image.to(acc)
    neighbours = F.unfold(image, size, padding=radius).view(B, image.shape[1], size * size, H, W)
    colour = ((neighbours - image[:, :, None]) ** 2).sum(1)
    kernel = spatial.view(1, -1, 1, 1) * inside * torch.exp(-colour / (2.0 * sigma_rgb ** 2))
    labels = F.unfold(y, size, padding=radius).view(B, K, size * size, H, W)
    agreement = (y[:, :, None] * labels).sum(1)
    return (0.5 * (kernel * (1 - agreement.to(acc))).sum((1, 2, 3))).to(y.dtype)


def reference_solver(logits, image, seeds, iters, compiled=False, eta=0.3, lam=6.0):
    """The plain solver a user would write: pseudo-logits v, y = softmax(v) with the seeds clamped, the
    energy of the reference ops through autograd, torch.optim.Adam; optionally the energy under
    torch.compile."""
    K = logits.shape[1]
    seeded = seeds != 255
    one_hot = F.one_hot(seeds.clamp(max=K - 1), K).permute(0, 3, 1, 2).float()
    sigma = torch.softmax(logits, 1)

    def energy(v):
        y = torch.where(seeded[:, None], one_hot, torch.softmax(v, 1))
        unary = -torch.log((sigma * y).sum(1) + 1e-8)[~seeded].sum()
        return eta * unary + lam * pottsops.potts_energy(y, image, relaxation="cd", neighborhood="nn4",
                                                         backend="reference")

    fn = _compiled_energy(energy) if compiled else energy
    v = torch.log(sigma).detach().requires_grad_()
    optimizer = torch.optim.Adam([v], lr=0.1)
    for _ in range(iters):
        optimizer.zero_grad()
        fn(v).backward()
        optimizer.step()
    return torch.where(seeded[:, None], one_hot, torch.softmax(v.detach(), 1))


_compiled = {}


def _compiled_energy(energy):
    if "energy" not in _compiled:
        _compiled["energy"] = torch.compile(lambda v, fn: fn(v))
    return lambda v: _compiled["energy"](v, energy)


def gated_style_window_loss(y, image, radius, sigma_rgb):
    """A window Potts loss written as unfold-based losses (the Gated CRF loss) are: the (2r+1)^2 neighbours
    of y and of the image materialised, kernels over them (sigma_xy = radius), sum_i sum_j k_ij (1 - y_i . y_j)
    / (B H W)."""
    B, K, H, W = y.shape
    return 2 * unfold_window_potts(y, image, pottsops.window(radius), sigma_rgb).sum() / (B * H * W)


def shift_subtract_nn4_loss(y, image, sigma_rgb):
    """The hand-written nn4 term: right and down neighbours by slicing, w = exp(-|dI|^2 / 2 sigma^2),
    sum w |y_i - y_j|^2 / (B H W)."""
    B, K, H, W = y.shape
    total = 0.0
    for a, b, ia, ib in ((y[:, :, :, 1:], y[:, :, :, :-1], image[:, :, :, 1:], image[:, :, :, :-1]),
                         (y[:, :, 1:], y[:, :, :-1], image[:, :, 1:], image[:, :, :-1])):
        weight = torch.exp(-((ia - ib) ** 2).sum(1) / (2 * sigma_rgb ** 2))
        total = total + (weight * ((a - b) ** 2).sum(1)).sum()
    return total / (B * H * W)


def per_class_dense_crf_loss(images, segmentations, sigma_rgb, sigma_xy):
    """rloss's dense CRF loss the way it computes it: one lattice filtering per image and class, then
    -sum_k S_k^T W S_k / B (here each filtering is pottsops' CPU lattice on one channel)."""
    B, K = segmentations.shape[:2]
    total = 0.0
    for b in range(B):
        for k in range(K):
            s = segmentations[b:b + 1, k:k + 1]
            total = total - (s * pottsops.bilateral_filter(s, images[b:b + 1], sigma_xy, sigma_rgb, backend="cpu")).sum()
    return total / B
