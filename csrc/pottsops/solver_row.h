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

// g = [not seeded] (lam potts_grad + [unlabeled] eta dH/dy) for the W pixels of one row; scratch holds 6 * W.
template <int U, typename T>
SolverRowOut solver_row(int64_t K, int64_t W, RowPlanes<const T> y, RowPlanes<const T> operand,
                        RowPlanes<const T> potts_grad, const bool* unlabeled, const bool* seeded, T eta, T lam,
                        T eps, RowPlanes<T> grad, T* scratch) {
  T* __restrict__ dot = scratch;
  T* __restrict__ sum_y = dot + W;
  T* __restrict__ unl = dot + 2 * W;
  T* __restrict__ free = dot + 3 * W;
  T* __restrict__ lo = dot + 4 * W;
  T* __restrict__ hi = dot + 5 * W;
  for (int64_t w = 0; w < W; ++w) {
    unl[w] = unlabeled[w] ? T(1) : T(0);
    free[w] = seeded[w] ? T(0) : T(1);
    dot[w] = sum_y[w] = T(0);
    lo[w] = std::numeric_limits<T>::infinity();
    hi[w] = -std::numeric_limits<T>::infinity();
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict__ yk = y[k];
    const T* __restrict__ ok = operand[k];
    for (int64_t w = 0; w < W; ++w) {
      dot[w] += unary_dot_term<U, T>(ok[w], yk[w], ok[w], eps);
      sum_y[w] += yk[w];
    }
  }
  SolverRowOut out{0.0, 0.0};
  for (int64_t w = 0; w < W; ++w)
    out.value += unlabeled[w] ? static_cast<double>(eta * unary_value<U, T>(dot[w], sum_y[w], T(0), eps)) : 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const T* __restrict__ yk = y[k];
    const T* __restrict__ ok = operand[k];
    const T* __restrict__ pk = potts_grad[k];
    T* __restrict__ gk = grad[k];
    for (int64_t w = 0; w < W; ++w) {
      const T unary = unary_grad_label<U, T>(ok[w], yk[w], ok[w], dot[w], T(0), eps);
      const T g = free[w] * (lam * pk[w] + unl[w] * eta * unary);
      gk[w] = g;
      lo[w] = g < lo[w] ? g : lo[w];
      hi[w] = g > hi[w] ? g : hi[w];
    }
  }
  for (int64_t w = 0; w < W; ++w) out.spread = std::max(out.spread, static_cast<double>(hi[w] - lo[w]));
  return out;
}

}  // namespace pottsops
