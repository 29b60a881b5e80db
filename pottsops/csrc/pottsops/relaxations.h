// The math of pottsops, once, for every C++ and CUDA kernel.
//
// A Potts relaxation P(p, q) of two soft labels p, q on the K-simplex is written as a function of three
// scalars: s = p.q, a = |p|^2, b = |q|^2.  Kernels compute (s, a, b), call pair_terms() and chain the
// partials: dP/dp = dP/ds q + 2 dP/da p,  dP/dq = dP/ds p + 2 dP/db q.
//
// The unaries H(y, sigma) with sigma = softmax(z) are written the same way, from per-pixel scalars that
// kernels reduce over the K channels (see UnaryScalars below).
#pragma once

#include <cmath>

#ifndef __CUDACC__
#include "pottsops/fast_math.h"
#endif

#if defined(__CUDACC__) || defined(__HIPCC__)
#define POTTS_HD __host__ __device__ __forceinline__
#else
#define POTTS_HD inline __attribute__((always_inline))  // inlined into the loops, which then vectorise
#endif

namespace pottsops {

// Order matters: the Python layer passes these indices (pottsops/names.py RELAXATIONS; tests/test_constants.py
// checks the two agree).
enum Relaxation : int {
  kBilinear = 0,
  kQuadratic = 1,
  kNormalizedQuadratic = 2,
  kCollisionCE = 3,
  kLogQuadratic = 4,
  kCollisionDivergence = 5,
  kNumRelaxations = 6,
};

template <typename T>
struct PairTerms {
  T value;  // P(p, q)
  T d_s;    // dP/ds
  T d_a;    // dP/da
  T d_b;    // dP/db
};

// Elementary functions: the CUDA builtins on the device; on the host, vectorisable versions for float
// (pottsops/fast_math.h) and libm for double.
template <typename T>
POTTS_HD T potts_sqrt(T x) { return sqrt(x); }
template <typename T>
POTTS_HD T potts_max(T x, T y) { return x > y ? x : y; }
#ifdef __CUDACC__
template <typename T>
POTTS_HD T potts_log(T x) { return log(x); }
template <typename T>
POTTS_HD T potts_exp(T x) { return exp(x); }
#else
POTTS_HD float potts_log(float x) { return fast_logf(x); }
POTTS_HD double potts_log(double x) { return std::log(x); }
POTTS_HD float potts_exp(float x) { return fast_expf(x); }
POTTS_HD double potts_exp(double x) { return std::exp(x); }
#endif

// Value and partials of relaxation R at (s, a, b).  R is a template parameter so that kernels are
// instantiated once per relaxation and the switch disappears from inner loops.
template <int R, typename T>
POTTS_HD PairTerms<T> pair_terms(T s, T a, T b, T eps) {
  PairTerms<T> t;
  if (R == kBilinear) {
    t.value = T(1) - s;
    t.d_s = T(-1);
    t.d_a = T(0);
    t.d_b = T(0);
  } else if (R == kQuadratic) {
    t.value = T(0.5) * (a + b) - s;
    t.d_s = T(-1);
    t.d_a = T(0.5);
    t.d_b = T(0.5);
  } else if (R == kNormalizedQuadratic) {
    const T inv_norm = T(1) / potts_sqrt(a * b);
    const T cosine = s * inv_norm;
    t.value = T(1) - cosine;
    t.d_s = -inv_norm;
    t.d_a = T(0.5) * cosine / a;
    t.d_b = T(0.5) * cosine / b;
  } else if (R == kCollisionCE) {
    const T u = s + eps;
    t.value = -potts_log(u);
    t.d_s = T(-1) / u;
    t.d_a = T(0);
    t.d_b = T(0);
  } else if (R == kLogQuadratic) {
    // 1 - (a + b)/2 + s = 1 - |p - q|^2 / 2 is >= 0 on the simplex; rounding may push it just below
    // zero for nearly opposite one-hot labels, hence the clamp before eps is added.
    const T u = potts_max(T(1) - T(0.5) * (a + b) + s, T(0)) + eps;
    t.value = -potts_log(u);
    t.d_s = T(-1) / u;
    t.d_a = T(0.5) / u;
    t.d_b = T(0.5) / u;
  } else {  // kCollisionDivergence
    const T norm = potts_sqrt(a * b);
    const T u = s + eps * norm;  // = norm * (s / norm + eps)
    t.value = -potts_log(u / norm);
    t.d_s = T(-1) / u;
    t.d_a = T(0.5) * s / (a * u);
    t.d_b = T(0.5) * s / (b * u);
  }
  return t;
}

// Runs the trailing lambda body with the relaxation index as the compile-time constant R, like
// AT_DISPATCH_*: POTTS_DISPATCH_RELAXATION(relaxation, [&] { kernel<R>(...); }).  An index outside the table
// is an error (TORCH_CHECK, expanded where the macro is used: host code that includes torch), never a
// silent fallback to another relaxation.
#define POTTS_RELAXATION_CASE(value, ...) \
  case value: {                            \
    constexpr int R = value;               \
    __VA_ARGS__();                         \
    break;                                 \
  }
#define POTTS_DISPATCH_RELAXATION(relaxation, ...)                                   \
  switch (relaxation) {                                                              \
    POTTS_RELAXATION_CASE(::pottsops::kBilinear, __VA_ARGS__)                        \
    POTTS_RELAXATION_CASE(::pottsops::kQuadratic, __VA_ARGS__)                       \
    POTTS_RELAXATION_CASE(::pottsops::kNormalizedQuadratic, __VA_ARGS__)             \
    POTTS_RELAXATION_CASE(::pottsops::kCollisionCE, __VA_ARGS__)                     \
    POTTS_RELAXATION_CASE(::pottsops::kLogQuadratic, __VA_ARGS__)                    \
    POTTS_RELAXATION_CASE(::pottsops::kCollisionDivergence, __VA_ARGS__)             \
    default:                                                                         \
      TORCH_CHECK(false, "relaxation: unknown index ", (relaxation), ", expected 0 to ", \
                  ::pottsops::kNumRelaxations - 1);                                  \
  }

// ---------------------------------------------------------------------------------------------------
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
