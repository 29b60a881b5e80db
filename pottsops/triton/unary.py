"""Fused softmax + unary H(y, softmax(z)) in Triton, forward and backward (contract of csrc/ops.cpp).

A program holds BLOCK_P pixels with all K classes as a [BLOCK_K, BLOCK_P] tile: logits and labels are
read once, the per-pixel reductions stay in registers, and each output is written once.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from pottsops import _ops
from pottsops.triton import checks
from pottsops.triton.grid_potts import _blocks, _mask_view, _strides, _tl_dtype, accumulation_dtype, launch
from pottsops.triton.math import narrow


@triton.jit
def _load(z_ptr, y_ptr, mask_ptr, b, h, w, k, K, H, W, sz_b, sz_k, sz_h, sz_w, sy_b, sy_k, sy_h, sy_w,
          sm_b, sm_h, sm_w, in_image, HAS_MASK: tl.constexpr, ACC: tl.constexpr):
    """z and y tiles (missing pixels read as z = 0, y = 1/K; padded classes as z = -inf, y = 0)."""
    present = in_image
    if HAS_MASK:
        present = present & (tl.load(mask_ptr + b * sm_b + h * sm_h + w * sm_w, mask=in_image, other=0) != 0)
    k_ok = (k < K)[:, None]
    load = k_ok & present[None, :]
    z = tl.load(z_ptr + b * sz_b + k[:, None] * sz_k + h[None, :] * sz_h + w[None, :] * sz_w, mask=load, other=0)
    y = tl.load(y_ptr + b * sy_b + k[:, None] * sy_k + h[None, :] * sy_h + w[None, :] * sy_w, mask=load, other=0)
    z = tl.where(k_ok, z.to(ACC), -float("inf"))
    y = tl.where(load, y.to(ACC), tl.where(k_ok, 1.0 / K, 0.0).to(ACC))
    return z, y, present, k_ok


@triton.jit
def _reduce(z, y, k_ok, eps, UNARY: tl.constexpr):
    """sigma (tile), lse, the unary's dot product, sum of y and H per pixel."""
    m = tl.max(z, 0)
    e = tl.exp(z - m[None, :])
    total = tl.sum(e, 0)
    sigma = e / total[None, :]
    lse = m + tl.log(total)
    sum_y = tl.sum(y, 0)
    if UNARY == 0:  # collision CE
        dot = tl.sum(sigma * y, 0)
        value = -tl.log(dot + eps)
    elif UNARY == 1:  # CE
        dot = tl.sum(y * tl.where(k_ok, z, 0), 0)  # padded classes: y = 0, z = -inf
        value = lse * sum_y - dot
    else:  # reverse CE (UNARY == 2; triton/checks.py refuses any other index before a launch)
        tl.static_assert(UNARY == 2, "unknown unary index")
        dot = tl.sum(-sigma * tl.log(y + eps), 0)
        value = dot
    return sigma, lse, dot, sum_y, value


@triton.jit
def _forward_kernel(z_ptr, y_ptr, mask_ptr, loss_ptr, K, H, W, eps, sz_b, sz_k, sz_h, sz_w, sy_b, sy_k, sy_h, sy_w,
                    sm_b, sm_h, sm_w, sl_b, sl_h, sl_w, UNARY: tl.constexpr, HAS_MASK: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    eps = tl.full((), eps, ACC)  # a Python float comes as fp64 under torch.compile on GPUs with fp64
    b = tl.program_id(1).to(tl.int64)
    pixel = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    in_image = pixel < H * W
    h = pixel // W
    w = pixel % W
    k = tl.arange(0, BLOCK_K).to(tl.int64)
    z, y, present, k_ok = _load(z_ptr, y_ptr, mask_ptr, b, h, w, k, K, H, W, sz_b, sz_k, sz_h, sz_w, sy_b, sy_k,
                                sy_h, sy_w, sm_b, sm_h, sm_w, in_image, HAS_MASK, ACC)
    _, _, _, _, value = _reduce(z, y, k_ok, eps, UNARY)
    out = loss_ptr + b * sl_b + h * sl_h + w * sl_w
    tl.store(out, tl.where(present, value, 0).to(loss_ptr.dtype.element_ty), mask=in_image)


@triton.jit
def _backward_kernel(go_ptr, z_ptr, y_ptr, mask_ptr, gz_ptr, gy_ptr, K, H, W, eps, sg_b, sg_h, sg_w,
                     sz_b, sz_k, sz_h, sz_w, sy_b, sy_k, sy_h, sy_w, sm_b, sm_h, sm_w,
                     so_b, so_k, so_h, so_w, UNARY: tl.constexpr, HAS_MASK: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    eps = tl.full((), eps, ACC)  # a Python float comes as fp64 under torch.compile on GPUs with fp64
    b = tl.program_id(1).to(tl.int64)
    pixel = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    in_image = pixel < H * W
    h = pixel // W
    w = pixel % W
    k = tl.arange(0, BLOCK_K).to(tl.int64)
    z, y, present, k_ok = _load(z_ptr, y_ptr, mask_ptr, b, h, w, k, K, H, W, sz_b, sz_k, sz_h, sz_w, sy_b, sy_k,
                                sy_h, sy_w, sm_b, sm_h, sm_w, in_image, HAS_MASK, ACC)
    sigma, lse, dot, sum_y, value = _reduce(z, y, k_ok, eps, UNARY)
    go = tl.load(go_ptr + b * sg_b + h * sg_h + w * sg_w, mask=present, other=0).to(ACC)
    go = tl.where(present, go, 0)[None, :]
    if UNARY == 0:
        d_z = -sigma * (y - dot[None, :]) / (dot + eps)[None, :]
        d_y = -sigma / (dot + eps)[None, :]
    elif UNARY == 1:
        d_z = sigma * sum_y[None, :] - y
        d_y = lse[None, :] - tl.where(k_ok, z, 0)  # -log sigma_k, finite where sigma_k underflows
    else:
        d_z = sigma * (-tl.log(y + eps) - value[None, :])
        d_y = -sigma / (y + eps)
    offset = b * so_b + k[:, None] * so_k + h[None, :] * so_h + w[None, :] * so_w
    store = k_ok & in_image[None, :]
    tl.store(gz_ptr + offset, narrow(go * d_z, gz_ptr), mask=store)
    tl.store(gy_ptr + offset, narrow(go * d_y, gy_ptr), mask=store)


@triton_op("pottsops_triton::unary_loss", mutates_args=())
def unary_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, kind: int,
               eps: float) -> torch.Tensor:
    checks.unary_args(logits, y, mask, kind, eps)
    B, K, H, W = logits.shape
    block_k, block_p = _blocks(K, H * W)
    loss = torch.empty(B, H, W, dtype=logits.dtype, device=logits.device)
    if B * H * W:
        launch(_forward_kernel, (triton.cdiv(H * W, block_p), B), logits.device,
            logits, y, _mask_view(mask), loss, K, H, W, eps, *logits.stride(), *y.stride(), *_strides(mask, 3),
            *loss.stride(), UNARY=kind, HAS_MASK=mask is not None,
            ACC=_tl_dtype(accumulation_dtype(logits.dtype)), BLOCK_K=block_k, BLOCK_P=block_p)
    return loss


@triton_op("pottsops_triton::unary_loss_backward", mutates_args=())
def unary_loss_backward(grad_loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                        kind: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    checks.unary_args(logits, y, mask, kind, eps)
    if grad_loss.shape != (logits.shape[0], *logits.shape[2:]) or grad_loss.device != logits.device:
        raise ValueError(f"grad_loss: expected shape ({logits.shape[0]}, {logits.shape[2]}, {logits.shape[3]}) on "
                         f"{logits.device}, got {tuple(grad_loss.shape)}")
    B, K, H, W = logits.shape
    block_k, block_p = _blocks(K, H * W)
    grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    grad_y = torch.empty(logits.shape, dtype=y.dtype, device=logits.device)
    if B * H * W:
        launch(_backward_kernel, (triton.cdiv(H * W, block_p), B), logits.device,
            grad_loss, logits, y, _mask_view(mask), grad_logits, grad_y, K, H, W, eps, *grad_loss.stride(),
            *logits.stride(), *y.stride(), *_strides(mask, 3), *grad_logits.stride(), UNARY=kind,
            HAS_MASK=mask is not None, ACC=_tl_dtype(accumulation_dtype(logits.dtype)), BLOCK_K=block_k,
            BLOCK_P=block_p)
    return grad_logits, grad_y


_setup, _backward = _ops.unary_autograd(unary_loss_backward)
unary_loss.register_autograd(_backward, setup_context=_setup)
