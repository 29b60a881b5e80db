// The unaries H(y, sigma), sigma = softmax(z), once, for every C++ and CUDA kernel: written, like the
// relaxations, from per-pixel scalars that kernels reduce over the K channels.
#pragma once

#include "pottsops/elementary.h"

namespace pottsops {

// Unaries.  With sigma = softmax(z), m = max_k z_k, Z = sum_k exp(z_k - m), lse = m + log Z:
//   cce: H = -log(sigma.y + eps)
//   ce : H = -sum_k y_k log sigma_k = lse * sum(y) - sum_k y_k z_k
//   rce: H = -sum_k sigma_k log(y_k + eps)
// Kernels make one pass over K for (m, Z), one for the kind's dot product, and one for the gradients.

enum Unary : int { kUnaryCollisionCE = 0, kUnaryCE = 1, kUnaryReverseCE = 2, kNumUnaries = 3 };

// Per-pixel dot product each unary needs, one term per class k (sigma_k = exp(z_k - m) / Z).
template <int U, typename T>
POTTS_HD T unary_dot_term(T z, T y, T sigma, T eps) {
  if (U == kUnaryCollisionCE) return sigma * y;     // t = sigma.y
  if (U == kUnaryCE) return y * z;                  // sum y_k z_k
  return -sigma * potts_log(y + eps);               // H itself for rce
}

// H from the reduced dot product (and sum(y), lse for ce).
template <int U, typename T>
POTTS_HD T unary_value(T dot, T sum_y, T lse, T eps) {
  if (U == kUnaryCollisionCE) return -potts_log(dot + eps);
  if (U == kUnaryCE) return lse * sum_y - dot;
  return dot;
}

// dH/dz_k for one class, given the reduced scalars (value = H, lse = log-sum-exp of z).
template <int U, typename T>
POTTS_HD T unary_grad_logit(T z, T y, T sigma, T dot, T sum_y, T lse, T value, T eps) {
  if (U == kUnaryCollisionCE) return -sigma * (y - dot) / (dot + eps);
  if (U == kUnaryCE) return sigma * sum_y - y;
  return sigma * (-potts_log(y + eps) - value);
}

// dH/dy_k = unary_label_factor (per pixel) * unary_label_term (per class), so that row kernels compute the
// factor (a division for cce) once per pixel.
template <int U, typename T>
POTTS_HD T unary_label_factor(T dot, T eps) {
  if (U == kUnaryCollisionCE) return T(-1) / (dot + eps);
  if (U == kUnaryCE) return T(1);
  return T(-1);
}

template <int U, typename T>
POTTS_HD T unary_label_term(T z, T y, T sigma, T lse, T eps) {
  if (U == kUnaryCollisionCE) return sigma;
  if (U == kUnaryCE) return lse - z;  // -log sigma_k, finite even where sigma_k underflows
  return sigma / (y + eps);
}

// dH/dy_k for one class.
template <int U, typename T>
POTTS_HD T unary_grad_label(T z, T y, T sigma, T dot, T lse, T eps) {
  return unary_label_factor<U, T>(dot, eps) * unary_label_term<U, T>(z, y, sigma, lse, eps);
}

#define POTTS_UNARY_CASE(value, ...) \
  case value: {                       \
    constexpr int U = value;          \
    __VA_ARGS__();                    \
    break;                            \
  }
#define POTTS_DISPATCH_UNARY(kind, ...)                                  \
  switch (kind) {                                                        \
    POTTS_UNARY_CASE(::pottsops::kUnaryCollisionCE, __VA_ARGS__)         \
    POTTS_UNARY_CASE(::pottsops::kUnaryCE, __VA_ARGS__)                  \
    POTTS_UNARY_CASE(::pottsops::kUnaryReverseCE, __VA_ARGS__)           \
    default:                                                             \
      TORCH_CHECK(false, "kind: unknown unary index ", (kind), ", expected 0 to ", \
                  ::pottsops::kNumUnaries - 1);                          \
  }

}  // namespace pottsops
