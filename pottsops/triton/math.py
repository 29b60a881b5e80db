"""The relaxation and unary table of csrc/pottsops/relaxations.h, for Triton kernels.

REL and UNARY are the indices of pottsops.names.RELAXATIONS / UNARIES (compile-time constants).
"""
import triton
import triton.language as tl

BILINEAR, QUADRATIC, NORMALIZED_QUADRATIC, COLLISION_CE, LOG_QUADRATIC, COLLISION_DIVERGENCE = range(6)
UNARY_CCE, UNARY_CE, UNARY_RCE = range(3)


@triton.jit
def pair_terms(s, a, b, eps, REL: tl.constexpr):
    """(P, dP/ds, dP/da, dP/db) of relaxation REL at s = p.q, a = |p|^2, b = |q|^2."""
    zero = s * 0
    if REL == 0:  # bilinear
        value, d_s, d_a, d_b = 1 - s, zero - 1, zero, zero
    elif REL == 1:  # quadratic
        value, d_s, d_a, d_b = 0.5 * (a + b) - s, zero - 1, zero + 0.5, zero + 0.5
    elif REL == 2:  # normalized quadratic
        inv_norm = 1 / tl.sqrt(a * b)
        cosine = s * inv_norm
        value, d_s, d_a, d_b = 1 - cosine, -inv_norm, 0.5 * cosine / a, 0.5 * cosine / b
    elif REL == 3:  # collision cross-entropy
        u = s + eps
        value, d_s, d_a, d_b = -tl.log(u), -1 / u, zero, zero
    elif REL == 4:  # log-quadratic; the clamp only absorbs rounding (see relaxations.h)
        u = tl.maximum(1 - 0.5 * (a + b) + s, zero) + eps
        value, d_s, d_a, d_b = -tl.log(u), -1 / u, 0.5 / u, 0.5 / u
    else:  # collision divergence (REL == 5; triton/checks.py refuses any other index before a launch)
        tl.static_assert(REL == 5, "unknown relaxation index")
        norm = tl.sqrt(a * b)
        u = s + eps * norm
        value, d_s, d_a, d_b = -tl.log(u / norm), -1 / u, 0.5 * s / (a * u), 0.5 * s / (b * u)
    return value, d_s, d_a, d_b


@triton.jit
def narrow(x, ptr):
    """x as ptr's element type; into fp16 or bf16 saturated at its largest finite value, so that a gradient of
    order 1/eps stays finite (narrow in csrc/pottsops/grid_args.h)."""
    if ptr.dtype.element_ty == tl.float16:
        x = tl.minimum(tl.maximum(x, -65504.0), 65504.0)
    elif ptr.dtype.element_ty == tl.bfloat16:
        x = tl.minimum(tl.maximum(x, -3.38953139e38), 3.38953139e38)
    return x.to(ptr.dtype.element_ty)
