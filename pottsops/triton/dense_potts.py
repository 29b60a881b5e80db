"""Exact dense bilateral Potts energy and gradient in Triton, tiled like flash attention.

A program owns BLOCK_I pixels i of one image and sweeps all pixels j in tiles of BLOCK_J: per tile
S = Y_i Y_j^T and the squared feature distances (|f_i|^2 + |f_j|^2 - 2 F_i F_j^T) come from two tile
products, the weights exp(-d^2 / 2) and the relaxation's (P, dP/ds, dP/da) are applied elementwise, and
the gradient accumulates as (w dP/ds) Y_j plus 2 (sum_j w dP/da) y_i.  Memory is O(B K N), never N x N;
each program writes its own partial energy and gradient rows once (deterministic, no atomics).

E = 1/2 sum_{i != j} w_ij P(y_i, y_j) (each unordered pair once), and since P is symmetric,
dE/dy_i = sum_{j != i} w_ij dP/dp(y_i, y_j).
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from pottsops import _ops, reference
from pottsops.names import relaxation_index
from pottsops.triton import checks
from pottsops.triton.grid_potts import launch
from pottsops.triton.math import pair_terms

BLOCK_I = 64
BLOCK_J = 64
# Classes the tiles hold: at 128 (padded) the backward kernel needs 124.5 KB of shared memory on sm_90
# (compiled on the CPU by tests/test_triton_compile.py), at 256 it needs 220.5 KB of the 227 KB a block
# may use, too close to the limit for another Triton version; beyond, the lattice or the reference.
MAX_CLASSES = 128
PRECISIONS = ("ieee", "tf32", "bf16")  # of the label products (S and the gradient's); distances stay ieee


@triton.jit
def _tile(y_ptr, f_ptr, fn_ptr, m_ptr, b, rows, N, KP: tl.constexpr, DP: tl.constexpr):
    """Labels (rows, KP), features (rows, DP), |f|^2 and presence of the pixel rows of image b."""
    inside = rows < N
    present = inside & (tl.load(m_ptr + b * N + rows, mask=inside, other=0) != 0)
    k = tl.arange(0, KP)
    d = tl.arange(0, DP)
    Y = tl.load(y_ptr + (b * N + rows[:, None]) * KP + k[None, :], mask=present[:, None], other=0)
    F = tl.load(f_ptr + (b * N + rows[:, None]) * DP + d[None, :], mask=inside[:, None], other=0)
    fn = tl.load(fn_ptr + b * N + rows, mask=inside, other=0)
    return Y, F, fn, present


@triton.jit
def _label_dot(a, b, PRECISION: tl.constexpr):
    """a @ b in float32 accumulation: fp32 ("ieee"), tf32, or with bf16 operands."""
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _weights_and_terms(Yi, Fi, fni, pi, ai, i, Yj, Fj, fnj, pj, j, eps, REL: tl.constexpr,
                       PRECISION: tl.constexpr):
    s = _label_dot(Yi, tl.trans(Yj), PRECISION)
    d2 = fni[:, None] + fnj[None, :] - 2 * tl.dot(Fi, tl.trans(Fj), input_precision="ieee")
    w = tl.exp(-0.5 * tl.maximum(d2, 0))
    aj = tl.where(pj, tl.sum(Yj * Yj, 1), 1)  # missing pixels read as 1: finite terms, dropped below
    valid = pi[:, None] & pj[None, :] & (i[:, None] != j[None, :])
    value, d_s, d_a, _ = pair_terms(s, ai[:, None] + s * 0, aj[None, :] + s * 0, eps, REL)
    return tl.where(valid, w, 0), value, d_s, d_a, valid


@triton.jit
def _energy_kernel(y_ptr, f_ptr, fn_ptr, m_ptr, partial_ptr, N, eps, REL: tl.constexpr, PRECISION: tl.constexpr,
                   KP: tl.constexpr, DP: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    eps = tl.full((), eps, tl.float32)  # a Python float comes as fp64 under torch.compile on GPUs with fp64
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    i = pid.to(tl.int64) * BI + tl.arange(0, BI)
    Yi, Fi, fni, pi = _tile(y_ptr, f_ptr, fn_ptr, m_ptr, b, i, N, KP, DP)
    ai = tl.where(pi, tl.sum(Yi * Yi, 1), 1)
    total = tl.zeros((BI,), tl.float32)
    for start in range(0, N, BJ):
        j = start + tl.arange(0, BJ).to(tl.int64)
        Yj, Fj, fnj, pj = _tile(y_ptr, f_ptr, fn_ptr, m_ptr, b, j, N, KP, DP)
        w, value, _, _, valid = _weights_and_terms(Yi, Fi, fni, pi, ai, i, Yj, Fj, fnj, pj, j, eps, REL, PRECISION)
        total += tl.sum(tl.where(valid, w * value, 0), 1)
    tl.store(partial_ptr + b * tl.num_programs(0) + pid, tl.sum(total, 0))


@triton.jit
def _backward_kernel(go_ptr, y_ptr, f_ptr, fn_ptr, m_ptr, grad_ptr, N, eps, REL: tl.constexpr,
                     PRECISION: tl.constexpr, KP: tl.constexpr, DP: tl.constexpr, BI: tl.constexpr,
                     BJ: tl.constexpr):
    eps = tl.full((), eps, tl.float32)  # a Python float comes as fp64 under torch.compile on GPUs with fp64
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    i = pid.to(tl.int64) * BI + tl.arange(0, BI)
    Yi, Fi, fni, pi = _tile(y_ptr, f_ptr, fn_ptr, m_ptr, b, i, N, KP, DP)
    ai = tl.where(pi, tl.sum(Yi * Yi, 1), 1)
    grad = tl.zeros((BI, KP), tl.float32)
    own = tl.zeros((BI,), tl.float32)
    for start in range(0, N, BJ):
        j = start + tl.arange(0, BJ).to(tl.int64)
        Yj, Fj, fnj, pj = _tile(y_ptr, f_ptr, fn_ptr, m_ptr, b, j, N, KP, DP)
        w, _, d_s, d_a, valid = _weights_and_terms(Yi, Fi, fni, pi, ai, i, Yj, Fj, fnj, pj, j, eps, REL, PRECISION)
        coupling = tl.where(valid, w * d_s, 0)
        own += tl.sum(tl.where(valid, w * d_a, 0), 1)
        grad += _label_dot(coupling, Yj, PRECISION)
    go = tl.load(go_ptr + b)
    grad = go * (grad + 2 * own[:, None] * Yi)
    k = tl.arange(0, KP)
    tl.store(grad_ptr + (b * N + i[:, None]) * KP + k[None, :], grad, mask=(i < N)[:, None])


def _packed(y, features, mask):
    """Labels (B, N, KP) and features (B, N, DP) as contiguous float32 padded with zeros, |f|^2, mask."""
    B, K, H, W = y.shape
    N = H * W
    KP = max(16, triton.next_power_of_2(K))
    DP = max(16, triton.next_power_of_2(features.shape[1]))
    Y = torch.zeros(B, N, KP, dtype=torch.float32, device=y.device)
    Y[:, :, :K] = y.detach().flatten(2).transpose(1, 2)
    f = features.float().flatten(2).transpose(1, 2)
    f = f - f.mean(1, keepdim=True)  # centred: |f_i|^2 + |f_j|^2 - 2 f_i.f_j cancels less
    F = torch.zeros(B, N, DP, dtype=torch.float32, device=y.device)
    F[:, :, :f.shape[2]] = f
    fn = (f * f).sum(2).contiguous()
    m = mask.flatten(1).to(torch.uint8) if mask is not None else torch.ones(B, N, dtype=torch.uint8, device=y.device)
    return Y, F, fn, m.contiguous(), KP, DP


@triton_op("pottsops_triton::dense_potts_energy", mutates_args=())
def _dense_energy(y: torch.Tensor, features: torch.Tensor, mask: torch.Tensor | None, relaxation: int, eps: float,
                  precision: str) -> torch.Tensor:
    B, K, H, W = y.shape
    N = H * W
    Y, F, fn, m, KP, DP = _packed(y, features, mask)
    programs = triton.cdiv(N, BLOCK_I)
    partial = torch.zeros(B, max(programs, 1), dtype=torch.float32, device=y.device)
    if B * N:
        launch(_energy_kernel, (programs, B), Y.device, Y, F, fn, m, partial, N, eps, REL=relaxation,
               PRECISION=precision, KP=KP, DP=DP, BI=BLOCK_I, BJ=BLOCK_J)
    return 0.5 * partial.sum(1)  # float32: fp16's range ends at 65504


@triton_op("pottsops_triton::dense_potts_energy_backward", mutates_args=())
def _dense_backward(grad_energy: torch.Tensor, y: torch.Tensor, features: torch.Tensor, mask: torch.Tensor | None,
                    relaxation: int, eps: float, precision: str) -> torch.Tensor:
    B, K, H, W = y.shape
    N = H * W
    Y, F, fn, m, KP, DP = _packed(y, features, mask)
    grad = torch.zeros(B, N, KP, dtype=torch.float32, device=y.device)
    if B * N:
        launch(_backward_kernel, (triton.cdiv(N, BLOCK_I), B), Y.device,
            grad_energy.float().contiguous(), Y, F, fn, m, grad, N, eps, REL=relaxation, PRECISION=precision, KP=KP,
            DP=DP, BI=BLOCK_I, BJ=BLOCK_J)
    return reference.narrow(grad[:, :, :K].transpose(1, 2).reshape(B, K, H, W), y.dtype)


def _setup(ctx, inputs, output):
    y, features, mask, relaxation, eps, precision = inputs
    ctx.save_for_backward(y, features, mask)
    ctx.params = (relaxation, eps, precision)


def _backward(ctx, grad_energy):
    _ops.first_order_only("dense_potts_energy")
    y, features, mask = ctx.saved_tensors
    return _dense_backward(grad_energy, y, features, mask, *ctx.params), None, None, None, None, None


_dense_energy.register_autograd(_backward, setup_context=_setup)


def dense_potts_energy(y, features, mask, relaxation, eps, precision="ieee"):
    """Exact dense Potts energy per image (B,) on the GPU (or the Triton interpreter); see the module doc.
    Labels are computed in float32 whatever their dtype (float64 inputs too)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    checks.batch("y", y.shape[0])
    if y.shape[1] > MAX_CLASSES:
        raise ValueError(f"y: the exact dense Triton kernels take at most {MAX_CLASSES} classes (shared memory), got "
                         f"{y.shape[1]}; use method='lattice' or backend='reference'")
    return _dense_energy(y, features, mask, relaxation_index(relaxation), eps, precision)

