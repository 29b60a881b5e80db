// The relaxations of the Potts term, once, for every C++ and CUDA kernel.
//
// A Potts relaxation P(p, q) of two soft labels p, q on the K-simplex is written as a function of three
// scalars: s = p.q, a = |p|^2, b = |q|^2.  Kernels compute (s, a, b), call pair_terms() and chain the
// partials: dP/dp = dP/ds q + 2 dP/da p,  dP/dq = dP/ds p + 2 dP/db q.  (The unaries: unaries.h.)
#pragma once

#include "pottsops/elementary.h"

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

}  // namespace pottsops
