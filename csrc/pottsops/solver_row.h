// One image row of the fused solver gradient on the CPU, w innermost so that the loops vectorise: the
// row-wise form of solver_pixel (solver_math.h), shared by solver_gradient and grid_solver_gradient.
#pragma once

#include <algorithm>
#include <limits>

#include "pottsops/relaxations.h"

namespace pottsops {

struct SolverRowOut {
  double value;   // eta H summed over the row's unlabeled pixels
  double spread;  // the row's largest max_k g - min_k g
};

// Class k of a row starts at base + k * stride.
template <typename T>
struct RowPlanes {
  T* base;
  int64_t stride;
  T* operator[](int64_t k) const { return base + k * stride; }
};

// solver_row's loops over w, as functions with restrict pointer arguments (not locals: those the compiler
// may ignore) so that every loop vectorises.  Masks come as bytes: GCC has no vector type for bool loads.

// Class k's terms of the per-pixel sums: the unary's dot product and sum(y).
template <int U, typename T>
inline void solver_row_dot(int64_t W, const T* __restrict__ y, const T* __restrict__ operand, T eps,
                           T* __restrict__ dot, T* __restrict__ sum_y) {
  for (int64_t w = 0; w < W; ++w) {
    dot[w] += unary_dot_term<U, T>(operand[w], y[w], operand[w], eps);
    sum_y[w] += y[w];
  }
}

// Per pixel: pull = lam off the seeds, factor = eta unary_label_factor on free unlabeled pixels (else 0),
// and sum_y replaced by eta H on unlabeled pixels (else 0).
template <int U, typename T>
inline void solver_row_factors(int64_t W, const T* __restrict__ dot, const uint8_t* __restrict__ unlabeled,
                               const uint8_t* __restrict__ seeded, T eta, T lam, T eps, T* __restrict__ sum_y,
                               T* __restrict__ pull, T* __restrict__ factor) {
  for (int64_t w = 0; w < W; ++w) {
    pull[w] = seeded[w] ? T(0) : lam;
    factor[w] = unlabeled[w] && !seeded[w] ? eta * unary_label_factor<U, T>(dot[w], eps) : T(0);
    sum_y[w] = unlabeled[w] ? eta * unary_value<U, T>(dot[w], sum_y[w], T(0), eps) : T(0);
  }
}

// Class k's gradient g = pull potts_grad + factor unary_label_term, and the running per-pixel min and max.
template <int U, typename T>
inline void solver_row_class(int64_t W, const T* __restrict__ y, const T* __restrict__ operand,
                             const T* __restrict__ potts_grad, const T* __restrict__ pull,
                             const T* __restrict__ factor, T eps, T* __restrict__ grad, T* __restrict__ lo,
                             T* __restrict__ hi) {
  for (int64_t w = 0; w < W; ++w) {
    const T g = pull[w] * potts_grad[w] + factor[w] * unary_label_term<U, T>(operand[w], y[w], operand[w], T(0), eps);
    grad[w] = g;
    lo[w] = g < lo[w] ? g : lo[w];
    hi[w] = g > hi[w] ? g : hi[w];
  }
}

// g = [not seeded] (lam potts_grad + [unlabeled] eta dH/dy) for the W pixels of one row; scratch holds 6 * W.
template <int U, typename T>
SolverRowOut solver_row(int64_t K, int64_t W, RowPlanes<const T> y, RowPlanes<const T> operand,
                        RowPlanes<const T> potts_grad, const bool* unlabeled, const bool* seeded, T eta, T lam,
                        T eps, RowPlanes<T> grad, T* scratch) {
  T *dot = scratch, *sum_y = dot + W, *pull = dot + 2 * W, *factor = dot + 3 * W, *lo = dot + 4 * W,
    *hi = dot + 5 * W;
  std::fill(dot, dot + 2 * W, T(0));
  std::fill(lo, lo + W, std::numeric_limits<T>::infinity());
  std::fill(hi, hi + W, -std::numeric_limits<T>::infinity());
  for (int64_t k = 0; k < K; ++k) solver_row_dot<U, T>(W, y[k], operand[k], eps, dot, sum_y);
  solver_row_factors<U, T>(W, dot, reinterpret_cast<const uint8_t*>(unlabeled),
                           reinterpret_cast<const uint8_t*>(seeded), eta, lam, eps, sum_y, pull, factor);
  SolverRowOut out{0.0, 0.0};
  for (int64_t w = 0; w < W; ++w) out.value += static_cast<double>(sum_y[w]);  // eta H, summed in double
  for (int64_t k = 0; k < K; ++k)
    solver_row_class<U, T>(W, y[k], operand[k], potts_grad[k], pull, factor, eps, grad[k], lo, hi);
  for (int64_t w = 0; w < W; ++w) out.spread = std::max(out.spread, static_cast<double>(hi[w] - lo[w]));
  return out;
}

}  // namespace pottsops
