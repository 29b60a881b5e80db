"""Plain-PyTorch reference of every pottsops op, written for clarity, not speed.

It is the oracle of the tests and the baseline of the benchmarks.  Gradients come from autograd, so
the hand-derived partials of the kernels are checked against an independent derivation.  Reduced
precision inputs are computed in float32, like the kernels.
"""
import torch

from pottsops.names import RELAXATIONS, UNARIES


def accumulation_dtype(dtype):
    """The dtype a computation on dtype runs in, for every Python path (the kernels: at::opmath_type, the same rule):
    float64 stays float64, everything else (float32, float16, bfloat16) accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def narrow(t, dtype):
    """t as dtype; into fp16 or bf16 saturated at its largest finite value, as the kernels store (a gradient
    of order 1/eps stays finite: docs/contract.md §8)."""
    if dtype in (torch.float16, torch.bfloat16):
        top = torch.finfo(dtype).max
        t = t.clamp(-top, top)
    return t.to(dtype)


class _Widen(torch.autograd.Function):
    """t in its accumulation dtype, whose gradient comes back through narrow."""

    @staticmethod
    def forward(ctx, t):
        ctx.dtype = t.dtype
        return t.to(accumulation_dtype(t.dtype))

    @staticmethod
    def backward(ctx, grad):
        return narrow(grad, ctx.dtype)


def widen(t):
    """t in its accumulation dtype (float32 for reduced precision), gradients saturated on the way back."""
    return _Widen.apply(t) if t.dtype != accumulation_dtype(t.dtype) else t


def pair_potential(relaxation, p, q, eps=1e-8):
    """P(p, q) over dim 1 for a relaxation given by its long name (docs/contract.md §3)."""
    return pair_value(relaxation, (p * q).sum(1), (p * p).sum(1), (q * q).sum(1), eps)


def pair_value(relaxation, s, a, b, eps=1e-8):
    """P as a function of s = p.q, a = |p|^2, b = |q|^2 (broadcasting)."""
    if relaxation == "bilinear":
        return 1 - s
    if relaxation == "quadratic":
        return 0.5 * (a + b) - s
    if relaxation == "normalized_quadratic":
        return 1 - s / torch.sqrt(a * b)
    if relaxation == "collision_ce":
        return -torch.log(s + eps)
    if relaxation == "log_quadratic":
        # 1 - |p - q|^2 / 2 >= 0 on the simplex; the clamp only absorbs rounding and leaves the contract's partials
        # (-1/u, 1/(2u) at u = the clamped value + eps), as in the kernels: one-hot neighbours of different
        # classes, where the value is exactly 0, get them too.
        x = 1 - 0.5 * (a + b) + s
        return -torch.log(x + (torch.clamp(x, min=0) - x).detach() + eps)
    if relaxation == "collision_divergence":
        return -torch.log(s / torch.sqrt(a * b) + eps)
    raise ValueError(f"relaxation: unknown {relaxation!r}; expected one of {RELAXATIONS}")


def pair_slices(H, W, dy, dx):
    """Index slices (rows, cols) of the first and second endpoints of the pairs (i, i + (dy, dx))."""
    rows, cols = max(0, H - abs(dy)), max(0, W - abs(dx))  # no pairs where the offset reaches past the image
    first = (slice(max(0, -dy), max(0, -dy) + rows), slice(max(0, -dx), max(0, -dx) + cols))
    second = (slice(max(0, dy), max(0, dy) + rows), slice(max(0, dx), max(0, dx) + cols))
    return first, second


def pair_valid(mask, first, second):
    """(B, h, w) bool: both endpoints of the pairs exist."""
    return mask[:, first[0], first[1]] & mask[:, second[0], second[1]]


def grid_affinity(image, mask, inv_two_sigma2, offsets, spatial):
    """Edge weights (B, E, H, W): w[b, e, i] = spatial[e] * exp(-|I_i - I_j|^2 inv_two_sigma2[b]) for the
    pair (i, j = i + offsets[e]), zero where j falls outside the image or either end is masked out."""
    image = image.to(accumulation_dtype(image.dtype))
    B, _, H, W = image.shape
    weights = image.new_zeros(B, len(offsets), H, W)
    for e, ((dy, dx), g) in enumerate(zip(offsets, spatial)):
        first, second = pair_slices(H, W, dy, dx)
        diff = image[:, :, first[0], first[1]] - image[:, :, second[0], second[1]]
        w = g * torch.exp(-(diff * diff).sum(1) * inv_two_sigma2.view(B, 1, 1))
        if mask is not None:
            w = torch.where(pair_valid(mask, first, second), w, 0.0)
        weights[:, e, first[0], first[1]] = w
    return weights


def constant_affinity(y, mask, offsets, spatial):
    """Edge weights of a neighbourhood without image: the spatial factors alone."""
    B, _, H, W = y.shape
    ones = y.new_ones(B, 1, H, W, dtype=accumulation_dtype(y.dtype))
    return grid_affinity(ones, mask, ones.new_zeros(B), offsets, spatial)


def grid_potts_energy(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps):
    """Energy per image (B,): sum over pairs (i, i + offset) of w_ij P(y_i, y_j).

    Arguments as the compiled op pottsops::grid_potts_energy, with offsets as ((dy, dx), ...) and the
    relaxation by name."""
    y = widen(y)
    B, K, H, W = y.shape
    if weights is None:
        weights = grid_affinity(image, mask, inv_two_sigma2, offsets, spatial) if image is not None \
            else constant_affinity(y, mask, offsets, spatial)
    weights = widen(weights).to(y.dtype)
    energy = y.new_zeros(B)
    uniform = y.new_full((1, K, 1, 1), 1.0 / K)
    for e, (dy, dx) in enumerate(offsets):
        first, second = pair_slices(H, W, dy, dx)
        p = y[:, :, first[0], first[1]]
        q = y[:, :, second[0], second[1]]
        if mask is not None:
            # Pairs touching a missing pixel are skipped; their values are replaced before P is
            # evaluated so that whatever they hold (even NaN) reaches neither energy nor gradient.
            valid = pair_valid(mask, first, second).unsqueeze(1)
            p = torch.where(valid, p, uniform)
            q = torch.where(valid, q, uniform)
        pair = pair_potential(relaxation, p, q, eps)
        w = weights[:, e, first[0], first[1]]
        if mask is not None:
            w = torch.where(valid[:, 0], w, 0.0)
        energy = energy + (w * pair).sum((1, 2))
    return energy  # in the accumulation dtype: fp16's range ends at 65504


def unary_loss(logits, y, mask, kind, eps):
    """Per-pixel H(y, softmax(logits)) (B, H, W) for kind 'cce', 'ce' or 'rce'; zero where mask is False."""
    dtype = logits.dtype
    logits = widen(logits)
    y = widen(y).to(logits.dtype)
    if mask is not None:
        keep = mask.unsqueeze(1)
        logits = torch.where(keep, logits, 0.0)
        y = torch.where(keep, y, 1.0 / y.shape[1])
    log_sigma = torch.log_softmax(logits, dim=1)
    if kind == "cce":
        loss = -torch.log((log_sigma.exp() * y).sum(1) + eps)
    elif kind == "ce":
        loss = -(y * log_sigma).sum(1)
    elif kind == "rce":
        loss = -(log_sigma.exp() * torch.log(y + eps)).sum(1)
    else:
        raise ValueError(f"kind: unknown {kind!r}; expected one of {UNARIES}")
    if mask is not None:
        loss = torch.where(mask, loss, 0.0)
    return narrow(loss, dtype)


def bilateral_filter(values, features, chunk=1024):
    """Exact sum_j exp(-|f_i - f_j|^2 / 2) values_j over the pixels of each image (j = i included), for
    features (B, d, H, W) already divided by their sigma.  O(N^2) time, O(chunk N) memory."""
    B, C, H, W = values.shape
    dtype = accumulation_dtype(values.dtype)
    f = features.to(dtype).flatten(2).transpose(1, 2)  # (B, N, d)
    v = values.to(dtype).flatten(2)                    # (B, C, N)
    out = [v.new_zeros(B, C, 0)]  # no pixels: the empty result, as every grid op gives
    for start in range(0, H * W, chunk):
        fi = f[:, start:start + chunk]
        w = torch.exp(-0.5 * torch.cdist(fi, f).square())  # (B, chunk, N)
        out.append(torch.einsum("bij,bcj->bci", w, v))
    return narrow(torch.cat(out, 2).reshape(B, C, H, W), values.dtype)


def _dense_tiles(y, features, mask, relaxation, eps, grad_energy=None):
    """Dense energy (B,) and, given grad_energy (B,), the gradient to y: rows of pixels i at a time
    against all pixels j, w_ij and P recomputed per tile, so memory stays O(tile) + O(B K N)."""
    B, K, H, W = y.shape
    N = H * W
    acc = accumulation_dtype(y.dtype)
    Y = y.detach().to(acc).flatten(2).transpose(1, 2)  # (B, N, K)
    F = features.to(acc).flatten(2).transpose(1, 2)    # (B, N, d)
    M = mask.flatten(1) if mask is not None else torch.ones(B, N, dtype=torch.bool, device=y.device)
    norms = (Y * Y).sum(2)
    index = torch.arange(N, device=y.device)
    chunk = max(1, min(N, 2 ** 22 // max(1, B * N)))
    energy = torch.zeros(B, dtype=acc, device=y.device)
    grad = torch.zeros_like(Y) if grad_energy is not None else None
    for start in range(0, N, chunk):
        rows = slice(start, start + chunk)
        w = torch.exp(-0.5 * torch.cdist(F[:, rows], F).square())
        valid = M[:, rows, None] & M[:, None, :] & (index[rows, None] != index[None, :])
        with torch.enable_grad():
            Yi = Y[:, rows].requires_grad_(grad is not None)
            s = Yi @ Y.transpose(1, 2)
            P = pair_value(relaxation, s, (Yi * Yi).sum(2, keepdim=True), norms[:, None, :], eps)
            tile = torch.where(valid, w * P, 0).sum((1, 2))
            if grad is not None:
                (grad[:, rows],) = torch.autograd.grad(tile, Yi, grad_energy.to(acc))
        energy += tile.detach()
    return 0.5 * energy, grad


class _DenseExact(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, features, mask, relaxation, eps):
        ctx.save_for_backward(y, features, mask)
        ctx.params = (relaxation, eps)
        energy, _ = _dense_tiles(y, features, mask, relaxation, eps)
        return energy

    @staticmethod
    def backward(ctx, grad_energy):
        if torch.is_grad_enabled():  # create_graph=True: the tiles' gradient is not differentiable again
            raise RuntimeError("dense_potts_energy (method='exact'): second derivatives (double backward, "
                               "create_graph=True) are not implemented")
        y, features, mask = ctx.saved_tensors
        # E = 1/2 sum_{i != j} w_ij P(y_i, y_j) with P symmetric: dE/dy_i = sum_j w_ij dP/dp(y_i, y_j).
        _, grad = _dense_tiles(y, features, mask, *ctx.params, grad_energy=grad_energy)
        B, K, H, W = y.shape
        return narrow(grad.transpose(1, 2).reshape(B, K, H, W), y.dtype), None, None, None, None


def dense_potts_energy(y, features, mask, relaxation, eps):
    """Exact dense Potts energy per image (B,): sum over unordered pairs i != j (both present) of
    exp(-|f_i - f_j|^2 / 2) P(y_i, y_j), features (B, d, H, W) already divided by their sigma."""
    return _DenseExact.apply(y, features, mask, relaxation, eps)


def adaptive_step(theta, m, v, y, grad, steps, scale, seeds, seeded, rule):
    """One step of the solver's adaptive rule (csrc/pottsops/solver_math.h), in place, for the images b with
    scale[b] > 0: d = grad - <y, grad> per pixel, Adam's moments of d and theta -= lr m_hat / (sqrt(v_hat) + eps)
    (step number steps[b], lr = rule's lr * scale[b]), then theta less its per-pixel maximum, floored, and
    y = softmax(theta); seeds one-hot (theta 0 / log_floor) with zero moments, which the fused step expects
    them to hold already.  rule = (lr, beta1, beta2, eps, log_floor)."""
    lr, beta1, beta2, eps, log_floor = rule
    t = steps.to(torch.float64).view(-1, 1, 1, 1)
    lr_t = (lr * scale.view(-1, 1, 1, 1) / (1 - beta1 ** t)).to(y.dtype)
    root = (1 / torch.sqrt(1 - beta2 ** t)).to(y.dtype)
    d = grad - (y * grad).sum(1, keepdim=True)
    new_m = beta1 * m + (1 - beta1) * d
    new_v = beta2 * v + (1 - beta2) * d * d
    new_theta = theta - lr_t * new_m / (torch.sqrt(new_v) * root + eps)
    new_theta = (new_theta - new_theta.amax(1, keepdim=True)).clamp(min=log_floor)
    new_y = torch.softmax(new_theta, 1)
    one_hot = torch.nn.functional.one_hot(torch.where(seeded, seeds, 0), y.shape[1]).permute(0, 3, 1, 2).bool()
    clamped = seeded[:, None]
    new_theta = torch.where(clamped, torch.where(one_hot, 0.0, log_floor).to(y.dtype), new_theta)
    new_y = torch.where(clamped, one_hot.to(y.dtype), new_y)
    keep = ~(scale > 0).view(-1, 1, 1, 1)
    for out, new in ((theta, new_theta), (m, torch.where(clamped, 0, new_m)), (v, torch.where(clamped, 0, new_v)),
                     (y, new_y)):
        out.copy_(torch.where(keep, out, new))
