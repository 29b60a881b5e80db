"""Grid and window Potts energy, gradient and affinity in Triton (same contract as csrc/ops.cpp).

A program handles BLOCK_P pixels of one image with all K classes as a [BLOCK_K, BLOCK_P] tile.  The
forward pass sums w P over the pairs starting at its pixels and writes one partial per program (summed
per image afterwards, in a fixed order); the backward pass gathers, for each pixel, the pairs that start
and that end at it and writes its gradient once: no atomics, deterministic.
"""
import contextlib
import functools

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from pottsops import _ops
from pottsops.reference import accumulation_dtype  # the one rule: float64 stays, the rest in float32
from pottsops.triton import checks
from pottsops.triton.math import narrow, pair_terms

MAX_CLASSES = 1024
TILE = 4096  # elements of a [BLOCK_K, BLOCK_P] tile




def _blocks(K, HW):
    block_k = triton.next_power_of_2(K)
    if block_k > MAX_CLASSES:
        raise ValueError(f"y: the triton backend supports up to {MAX_CLASSES} classes, got K={K}; "
                         f"use backend='cuda' or 'cpu'")
    block_p = max(16, min(256, TILE // block_k, triton.next_power_of_2(HW)))
    return block_k, block_p


@triton.jit
def _weight(image_ptr, weights_ptr, inv_ptr, spatial_ptr, b, e, h, w, h2, w2, C, si_b, si_c, si_h, si_w,
            sw_b, sw_e, sw_h, sw_w, valid, HAS_IMAGE: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
            ACC: tl.constexpr):
    """Weights (BLOCK_P,) of the pairs (h, w) -> (h2, w2) of offset e; 0 where not valid."""
    if HAS_WEIGHTS:
        e64 = tl.cast(e, tl.int64)  # e * sw_e reaches E H W, past int32 on large batches of windows
        wt = tl.load(weights_ptr + b * sw_b + e64 * sw_e + h * sw_h + w * sw_w, mask=valid, other=0).to(ACC)
    else:
        g = tl.load(spatial_ptr + e)
        if HAS_IMAGE:
            d2 = tl.zeros(h.shape, ACC)
            for c in range(C):
                base = image_ptr + b * si_b + tl.cast(c, tl.int64) * si_c
                first = tl.load(base + h * si_h + w * si_w, mask=valid, other=0).to(ACC)
                second = tl.load(base + h2 * si_h + w2 * si_w, mask=valid, other=0).to(ACC)
                d2 += (first - second) * (first - second)
            wt = g * tl.exp(-d2 * tl.load(inv_ptr + b))
        else:
            wt = tl.zeros(h.shape, ACC) + g
    return tl.where(valid, wt, 0)


@triton.jit
def _present(mask_ptr, b, h, w, sm_b, sm_h, sm_w, inside, HAS_MASK: tl.constexpr):
    if HAS_MASK:
        return inside & (tl.load(mask_ptr + b * sm_b + h * sm_h + w * sm_w, mask=inside, other=0) != 0)
    return inside


@triton.jit
def _energy_kernel(y_ptr, image_ptr, weights_ptr, mask_ptr, inv_ptr, dy_ptr, dx_ptr, spatial_ptr, partial_ptr,
                   K, H, W, C, E, eps,
                   sy_b, sy_k, sy_h, sy_w, si_b, si_c, si_h, si_w, sw_b, sw_e, sw_h, sw_w, sm_b, sm_h, sm_w,
                   REL: tl.constexpr, HAS_IMAGE: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
                   HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    eps = tl.full((), eps, ACC)  # a Python float comes as fp64 under torch.compile on GPUs with fp64
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pixel = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    h = pixel // W
    w = pixel % W
    k = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = k < K
    here = _present(mask_ptr, b, h, w, sm_b, sm_h, sm_w, pixel < H * W, HAS_MASK)
    y_base = y_ptr + b * sy_b + k[:, None] * sy_k
    p = tl.load(y_base + h[None, :] * sy_h + w[None, :] * sy_w, mask=k_ok[:, None] & here[None, :], other=0)
    p = p.to(ACC)
    a = tl.where(here, tl.sum(p * p, 0), 1)  # missing lanes read as 1: finite terms, dropped below
    total = tl.zeros((BLOCK_P,), ACC)
    for e in range(E):
        h2 = h + tl.load(dy_ptr + e)
        w2 = w + tl.load(dx_ptr + e)
        inside = here & (h2 < H) & (w2 >= 0) & (w2 < W)
        valid = _present(mask_ptr, b, h2, w2, sm_b, sm_h, sm_w, inside, HAS_MASK)
        q = tl.load(y_base + h2[None, :] * sy_h + w2[None, :] * sy_w, mask=k_ok[:, None] & valid[None, :], other=0)
        q = q.to(ACC)
        s = tl.sum(p * q, 0)
        nq = tl.where(valid, tl.sum(q * q, 0), 1)
        wt = _weight(image_ptr, weights_ptr, inv_ptr, spatial_ptr, b, e, h, w, h2, w2, C, si_b, si_c, si_h, si_w,
                     sw_b, sw_e, sw_h, sw_w, valid, HAS_IMAGE, HAS_WEIGHTS, ACC)
        value, _, _, _ = pair_terms(s, a, nq, eps, REL)
        total += tl.where(wt != 0, wt * value, 0)
    tl.store(partial_ptr + b * tl.num_programs(0) + pid, tl.sum(total, 0))


@triton.jit
def _backward_kernel(go_ptr, y_ptr, image_ptr, weights_ptr, mask_ptr, inv_ptr, dy_ptr, dx_ptr, spatial_ptr,
                     grad_y_ptr, grad_w_ptr, K, H, W, C, E, eps,
                     sy_b, sy_k, sy_h, sy_w, si_b, si_c, si_h, si_w, sw_b, sw_e, sw_h, sw_w, sm_b, sm_h, sm_w,
                     sg_b, sg_k, sg_h, sg_w,
                     REL: tl.constexpr, HAS_IMAGE: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
                     HAS_MASK: tl.constexpr, WEIGHTS_GRAD: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    eps = tl.full((), eps, ACC)  # a Python float comes as fp64 under torch.compile on GPUs with fp64
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pixel = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    in_image = pixel < H * W
    h = pixel // W
    w = pixel % W
    k = tl.arange(0, BLOCK_K).to(tl.int64)
    k_ok = k < K
    here = _present(mask_ptr, b, h, w, sm_b, sm_h, sm_w, in_image, HAS_MASK)
    y_base = y_ptr + b * sy_b + k[:, None] * sy_k
    p = tl.load(y_base + h[None, :] * sy_h + w[None, :] * sy_w, mask=k_ok[:, None] & here[None, :], other=0)
    p = p.to(ACC)
    a = tl.where(here, tl.sum(p * p, 0), 1)  # missing lanes read as 1: finite terms, dropped below
    go = tl.load(go_ptr + b)
    grad = tl.zeros((BLOCK_K, BLOCK_P), ACC)
    own = tl.zeros((BLOCK_P,), ACC)  # coefficient of p itself
    for direction in tl.static_range(2):
        # direction 0: pairs (h, w) -> (h, w) + offset (this pixel is p); 1: (h, w) - offset -> (h, w) (q).
        for e in range(E):
            sign = 1 - 2 * direction
            h2 = h + sign * tl.load(dy_ptr + e)
            w2 = w + sign * tl.load(dx_ptr + e)
            inside = here & (h2 >= 0) & (h2 < H) & (w2 >= 0) & (w2 < W)
            valid = _present(mask_ptr, b, h2, w2, sm_b, sm_h, sm_w, inside, HAS_MASK)
            q = tl.load(y_base + h2[None, :] * sy_h + w2[None, :] * sy_w, mask=k_ok[:, None] & valid[None, :],
                        other=0)
            q = q.to(ACC)
            s = tl.sum(p * q, 0)
            nq = tl.where(valid, tl.sum(q * q, 0), 1)
            if direction == 0:
                wt = _weight(image_ptr, weights_ptr, inv_ptr, spatial_ptr, b, e, h, w, h2, w2, C, si_b, si_c,
                             si_h, si_w, sw_b, sw_e, sw_h, sw_w, valid, HAS_IMAGE, HAS_WEIGHTS, ACC)
                value, d_s, d_a, _ = pair_terms(s, a, nq, eps, REL)
                d_self = d_a
                if WEIGHTS_GRAD:  # dE/dw = P for every existing pair, also where w = 0
                    out = grad_w_ptr + ((b * E + e) * H + h) * W + w
                    tl.store(out, tl.where(valid, go * value, 0), mask=in_image)
            else:
                wt = _weight(image_ptr, weights_ptr, inv_ptr, spatial_ptr, b, e, h2, w2, h, w, C, si_b, si_c,
                             si_h, si_w, sw_b, sw_e, sw_h, sw_w, valid, HAS_IMAGE, HAS_WEIGHTS, ACC)
                value, d_s, _, d_self = pair_terms(s, nq, a, eps, REL)
            scale = tl.where(wt != 0, go * wt, 0)
            own += tl.where(wt != 0, 2 * scale * d_self, 0)
            grad += tl.where(wt != 0, scale * d_s, 0)[None, :] * q
    grad += own[None, :] * p
    out = grad_y_ptr + b * sg_b + k[:, None] * sg_k + h[None, :] * sg_h + w[None, :] * sg_w
    tl.store(out, narrow(grad, grad_y_ptr), mask=k_ok[:, None] & in_image[None, :])


@triton.jit
def _affinity_kernel(image_ptr, mask_ptr, inv_ptr, dy_ptr, dx_ptr, spatial_ptr, out_ptr, H, W, C, E,
                     si_b, si_c, si_h, si_w, sm_b, sm_h, sm_w, so_b, so_e, so_h, so_w,
                     HAS_MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pixel = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    in_image = pixel < H * W
    h = pixel // W
    w = pixel % W
    here = _present(mask_ptr, b, h, w, sm_b, sm_h, sm_w, in_image, HAS_MASK)
    for e in range(E):
        h2 = h + tl.load(dy_ptr + e)
        w2 = w + tl.load(dx_ptr + e)
        valid = _present(mask_ptr, b, h2, w2, sm_b, sm_h, sm_w, here & (h2 < H) & (w2 >= 0) & (w2 < W), HAS_MASK)
        wt = _weight(image_ptr, image_ptr, inv_ptr, spatial_ptr, b, e, h, w, h2, w2, C, si_b, si_c, si_h, si_w,
                     0, 0, 0, 0, valid, True, False, ACC)
        tl.store(out_ptr + b * so_b + tl.cast(e, tl.int64) * so_e + h * so_h + w * so_w, wt, mask=in_image)


def _make_pair_table(offsets, spatial, device, dtype):
    dy = torch.tensor(offsets[0::2], dtype=torch.int32, device=device)
    dx = torch.tensor(offsets[1::2], dtype=torch.int32, device=device)
    return dy, dx, torch.tensor(spatial, dtype=dtype, device=device)


_cached_pair_table = functools.lru_cache(maxsize=64)(_make_pair_table)


def _pair_table(offsets, spatial, device, dtype):
    """(dy, dx, spatial) as device tensors, cached per neighbourhood and device; made afresh (not cached)
    under a fake-tensor mode (torch.compile, opcheck), whose tensors a later eager launch must not read."""
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None:
        return _make_pair_table(offsets, spatial, device, dtype)
    return _cached_pair_table(offsets, spatial, device, dtype)


def launch(kernel, grid, device, *args, **kwargs):
    """kernel[grid](*args, **kwargs) on the tensors' device (Triton launches on the current one: a tensor on
    cuda:1 makes it current for the call only), through wrap_triton, which torch.compile traces; an
    interpreted kernel (TRITON_INTERPRET=1) is called directly, as torch 2.11's wrap_triton refuses it."""
    switch = device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device()
    with torch.cuda.device(device) if switch else contextlib.nullcontext():
        (kernel if isinstance(kernel, InterpretedFunction) else wrap_triton(kernel))[grid](*args, **kwargs)


def _strides(t, n=4):
    return tuple(t.stride()) if t is not None else (0,) * n


def _mask_view(mask):
    return mask.view(torch.uint8) if mask is not None else None


def _launch_args(y, image, weights, mask, inv, offsets, spatial):
    acc = accumulation_dtype(y.dtype)
    dy, dx, g = _pair_table(tuple(offsets), tuple(spatial), y.device, acc)
    image = image.to(acc) if image is not None and weights is None else None
    weights = weights.to(acc) if weights is not None else None
    inv = inv.to(device=y.device, dtype=acc) if image is not None else None
    return acc, image, weights, inv, dy, dx, g


def _tl_dtype(acc):
    return tl.float64 if acc == torch.float64 else tl.float32


@triton_op("pottsops_triton::grid_potts_energy", mutates_args=())
def grid_potts_energy(y: torch.Tensor, image: torch.Tensor | None, weights: torch.Tensor | None,
                      mask: torch.Tensor | None, inv_two_sigma2: torch.Tensor | None, offsets: list[int],
                      spatial: list[float], relaxation: int, eps: float) -> torch.Tensor:
    checks.grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps)
    B, K, H, W = y.shape
    acc, image, weights, inv, dy, dx, g = _launch_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial)
    block_k, block_p = _blocks(K, H * W)
    programs = triton.cdiv(H * W, block_p)
    partial = torch.empty(B, programs, dtype=acc, device=y.device)
    if B * H * W:
        launch(_energy_kernel, (programs, B), y.device,
            y, image, weights, _mask_view(mask), inv, dy, dx, g, partial, K, H, W,
            image.shape[1] if image is not None else 0, len(spatial), eps,
            *y.stride(), *_strides(image), *_strides(weights), *_strides(mask, 3),
            REL=relaxation, HAS_IMAGE=image is not None, HAS_WEIGHTS=weights is not None,
            HAS_MASK=mask is not None, ACC=_tl_dtype(acc), BLOCK_K=block_k, BLOCK_P=block_p)
    return partial.sum(1)  # in the accumulation dtype: fp16's range ends at 65504


@triton_op("pottsops_triton::grid_potts_energy_backward", mutates_args=())
def grid_potts_energy_backward(grad_energy: torch.Tensor, y: torch.Tensor, image: torch.Tensor | None,
                               weights: torch.Tensor | None, mask: torch.Tensor | None,
                               inv_two_sigma2: torch.Tensor | None, offsets: list[int], spatial: list[float],
                               relaxation: int, eps: float, weights_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    checks.grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps)
    if grad_energy.shape != (y.shape[0],) or grad_energy.device != y.device:
        raise ValueError(f"grad_energy: expected shape ({y.shape[0]},) on {y.device}, got {tuple(grad_energy.shape)}")
    if weights_grad and weights is None:
        raise ValueError("weights_grad: requires weights")
    B, K, H, W = y.shape
    acc, image, weights, inv, dy, dx, g = _launch_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial)
    block_k, block_p = _blocks(K, H * W)
    go = grad_energy.to(acc).contiguous()
    grad_y = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    E = len(spatial)
    grad_w = torch.zeros(B, E, H, W, dtype=acc, device=y.device) if weights_grad else y.new_empty(0)
    if B * H * W:
        launch(_backward_kernel, (triton.cdiv(H * W, block_p), B), y.device,
            go, y, image, weights, _mask_view(mask), inv, dy, dx, g, grad_y, grad_w, K, H, W,
            image.shape[1] if image is not None else 0, E, eps,
            *y.stride(), *_strides(image), *_strides(weights), *_strides(mask, 3), *grad_y.stride(),
            REL=relaxation, HAS_IMAGE=image is not None, HAS_WEIGHTS=weights is not None,
            HAS_MASK=mask is not None, WEIGHTS_GRAD=weights_grad, ACC=_tl_dtype(acc), BLOCK_K=block_k,
            BLOCK_P=block_p)
    if weights_grad:
        grad_w = grad_w.to(weights.dtype)
    return grad_y, grad_w


@triton_op("pottsops_triton::grid_affinity", mutates_args=())
def grid_affinity(image: torch.Tensor, mask: torch.Tensor | None, inv_two_sigma2: torch.Tensor,
                  offsets: list[int], spatial: list[float]) -> torch.Tensor:
    checks.grid_args(image, image, None, mask, inv_two_sigma2, offsets, spatial, 0, 0.0, labels=False)
    B, C, H, W = image.shape
    acc = accumulation_dtype(image.dtype)
    dy, dx, g = _pair_table(tuple(offsets), tuple(spatial), image.device, acc)
    image = image.to(acc)
    out = torch.empty(B, len(spatial), H, W, dtype=acc, device=image.device)
    block_p = max(16, min(256, triton.next_power_of_2(H * W)))
    if B * H * W:
        launch(_affinity_kernel, (triton.cdiv(H * W, block_p), B), image.device,
            image, _mask_view(mask), inv_two_sigma2.to(acc), dy, dx, g, out, H, W, C, len(spatial),
            *image.stride(), *_strides(mask, 3), *out.stride(),
            HAS_MASK=mask is not None, ACC=_tl_dtype(acc), BLOCK_P=block_p)
    return out


_setup, _backward = _ops.grid_autograd(grid_potts_energy_backward)
grid_potts_energy.register_autograd(_backward, setup_context=_setup)
