// One image row of the fused solver step on the CPU, w innermost so that the loops vectorise: the row
// forms of solver_pixel and mirror_pixel (solver_math.h), shared by the CPU solver ops.
#pragma once

#include <algorithm>
#include <cstdint>
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

// One entropic mirror step for the W pixels of one row (the row form of mirror_pixel, solver_math.h):
// new log y = max(log y - s g - lse, log_floor) with lse the log-sum-exp over k, y = exp(new log y)
// computed as exp(log y - s g - m) / sum (one exponential per element; exp(log_floor) where floored, so
// never a denormal), and the seeds' one-hot labels.  scratch holds 3 * W.
template <typename T>
inline void mirror_row_max(int64_t W, const T* __restrict__ log_y, const T* __restrict__ grad, T s,
                           T* __restrict__ m) {
  for (int64_t w = 0; w < W; ++w) m[w] = std::max(m[w], log_y[w] - s * grad[w]);
}

template <typename T>
inline void mirror_row_exp(int64_t W, const T* __restrict__ log_y, const T* __restrict__ grad, T s,
                           const T* __restrict__ m, T* __restrict__ total, T* __restrict__ y) {
  for (int64_t w = 0; w < W; ++w) {
    const T e = potts_exp(log_y[w] - s * grad[w] - m[w]);
    y[w] = e;
    total[w] += e;
  }
}

// Class k: seed holds the seed's class on seeded pixels and -1 elsewhere (as T, so that the loop has one
// element width and vectorises).
template <typename T>
inline void mirror_row_normalise(int64_t W, const T* __restrict__ log_y, const T* __restrict__ grad, T s,
                                 const T* __restrict__ lse, const T* __restrict__ inv_total,
                                 const T* __restrict__ seed, T k, T log_floor, T* __restrict__ new_log_y,
                                 T* __restrict__ y) {
  const T floor_y = potts_exp(log_floor);
  for (int64_t w = 0; w < W; ++w) {
    const T v = log_y[w] - s * grad[w] - lse[w];
    const T free_log = v > log_floor ? v : log_floor, free_y = v > log_floor ? y[w] * inv_total[w] : floor_y;
    const bool clamped = seed[w] >= T(0), on = seed[w] == k;
    new_log_y[w] = clamped ? (on ? T(0) : log_floor) : free_log;
    y[w] = clamped ? (on ? T(1) : T(0)) : free_y;
  }
}

template <typename T>
void mirror_row(int64_t K, int64_t W, RowPlanes<const T> log_y, RowPlanes<const T> grad, T s, const int64_t* seeds,
                const bool* seeded, T log_floor, RowPlanes<T> new_log_y, RowPlanes<T> y, T* scratch) {
  T *m = scratch, *total = m + W, *seed = m + 2 * W;
  for (int64_t w = 0; w < W; ++w) {
    m[w] = -std::numeric_limits<T>::infinity();
    total[w] = T(0);
    seed[w] = seeded[w] ? static_cast<T>(seeds[w]) : T(-1);
  }
  for (int64_t k = 0; k < K; ++k) mirror_row_max<T>(W, log_y[k], grad[k], s, m);
  for (int64_t k = 0; k < K; ++k) mirror_row_exp<T>(W, log_y[k], grad[k], s, m, total, y[k]);
  for (int64_t w = 0; w < W; ++w) {  // m becomes the log-sum-exp, total its inverse
    m[w] += potts_log(total[w]);
    total[w] = T(1) / total[w];
  }
  for (int64_t k = 0; k < K; ++k)
    mirror_row_normalise<T>(W, log_y[k], grad[k], s, m, total, seed, static_cast<T>(k), log_floor, new_log_y[k],
                            y[k]);
}

}  // namespace pottsops
