// One image row of the fused solver on the CPU, w innermost so that the loops vectorise: the unary part of
// the gradient (solver_row) and the row form of the step rule (adaptive_row, solver_math.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "pottsops/relaxations.h"
#include "pottsops/unaries.h"
#include "pottsops/solver_math.h"

namespace pottsops {

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

// Class k's gradient g = pull potts_grad + factor unary_label_term.
template <int U, typename T>
inline void solver_row_class(int64_t W, const T* __restrict__ y, const T* __restrict__ operand,
                             const T* __restrict__ potts_grad, const T* __restrict__ pull,
                             const T* __restrict__ factor, T eps, T* __restrict__ grad) {
  for (int64_t w = 0; w < W; ++w)
    grad[w] = pull[w] * potts_grad[w] + factor[w] * unary_label_term<U, T>(operand[w], y[w], operand[w], T(0), eps);
}

// g = [not seeded] (lam potts_grad + [unlabeled] eta dH/dy) for the W pixels of one row; returns eta H
// summed over the row's unlabeled pixels.  scratch holds 4 * W.
template <int U, typename T>
double solver_row(int64_t K, int64_t W, RowPlanes<const T> y, RowPlanes<const T> operand,
                  RowPlanes<const T> potts_grad, const bool* unlabeled, const bool* seeded, T eta, T lam, T eps,
                  RowPlanes<T> grad, T* scratch) {
  T *dot = scratch, *sum_y = dot + W, *pull = dot + 2 * W, *factor = dot + 3 * W;
  std::fill(dot, dot + 2 * W, T(0));
  for (int64_t k = 0; k < K; ++k) solver_row_dot<U, T>(W, y[k], operand[k], eps, dot, sum_y);
  solver_row_factors<U, T>(W, dot, reinterpret_cast<const uint8_t*>(unlabeled),
                           reinterpret_cast<const uint8_t*>(seeded), eta, lam, eps, sum_y, pull, factor);
  double value = 0;
  for (int64_t w = 0; w < W; ++w) value += static_cast<double>(sum_y[w]);  // eta H, summed in double
  for (int64_t k = 0; k < K; ++k) solver_row_class<U, T>(W, y[k], operand[k], potts_grad[k], pull, factor, eps, grad[k]);
  return value;
}

// One step of the adaptive rule (solver_math.h) for the W pixels of one row: the row form of
// adaptive_pixel, w innermost.  theta, m and v are updated in place; y_in holds the iterate's labels and
// y_out gets the new ones (they may be the same planes).  scratch holds 3 * W.
template <typename T>
inline void adaptive_row_mean(int64_t W, const T* __restrict__ y, const T* __restrict__ grad, T* __restrict__ mean) {
  for (int64_t w = 0; w < W; ++w) mean[w] += y[w] * grad[w];
}

template <typename T>
inline void adaptive_row_theta(int64_t W, const T* __restrict__ grad, const T* __restrict__ mean,
                               const AdaptiveStep<T>& s, T* __restrict__ theta, T* __restrict__ m,
                               T* __restrict__ v, T* __restrict__ top) {
  const AdaptiveStep<T> c = s;  // a local copy: the loop reads no memory it writes through
  for (int64_t w = 0; w < W; ++w) {
    T mw = m[w], vw = v[w];
    const T t = adaptive_theta<T>(theta[w], grad[w] - mean[w], mw, vw, c);
    m[w] = mw;
    v[w] = vw;
    theta[w] = t;
    top[w] = t > top[w] ? t : top[w];
  }
}

template <typename T>
inline void adaptive_row_exp(int64_t W, const T* __restrict__ top, T log_floor, T* __restrict__ theta,
                             T* __restrict__ y, T* __restrict__ total) {
  for (int64_t w = 0; w < W; ++w) {
    const T t = adaptive_normalised<T>(theta[w], top[w], log_floor);
    theta[w] = t;
    y[w] = potts_exp(t);
    total[w] += y[w];
  }
}

// Class k of y: one-hot on the seeded pixels (seed holds the seed's class there and -1 elsewhere, as T so
// that the loop has one element width), elsewhere divided by the pixel's total.  A seed's theta, m and v
// are left as they are: they hold the seed's values already (adaptive_step's precondition).
template <typename T>
inline void adaptive_row_finish(int64_t W, const T* __restrict__ inv_total, const T* __restrict__ seed, T k,
                                T* __restrict__ y) {
  for (int64_t w = 0; w < W; ++w) {
    const bool clamped = seed[w] >= T(0), on = seed[w] == k;
    y[w] = clamped ? (on ? T(1) : T(0)) : y[w] * inv_total[w];
  }
}

template <typename T>
void adaptive_row(int64_t K, int64_t W, RowPlanes<T> theta, RowPlanes<T> m, RowPlanes<T> v, RowPlanes<const T> y_in,
                  RowPlanes<T> y_out, RowPlanes<const T> grad, const int64_t* seeds, const bool* seeded, const AdaptiveStep<T>& s,
                  T* scratch) {
  T *mean = scratch, *top = mean + W, *seed = mean + 2 * W;
  for (int64_t w = 0; w < W; ++w) {
    mean[w] = T(0);
    top[w] = -std::numeric_limits<T>::infinity();
    seed[w] = seeded[w] ? static_cast<T>(seeds[w]) : T(-1);
  }
  for (int64_t k = 0; k < K; ++k) adaptive_row_mean<T>(W, y_in[k], grad[k], mean);
  for (int64_t k = 0; k < K; ++k) adaptive_row_theta<T>(W, grad[k], mean, s, theta[k], m[k], v[k], top);
  T* total = mean;  // the mean is spent
  std::fill(total, total + W, T(0));
  for (int64_t k = 0; k < K; ++k) adaptive_row_exp<T>(W, top, s.log_floor, theta[k], y_out[k], total);
  for (int64_t w = 0; w < W; ++w) total[w] = T(1) / total[w];
  for (int64_t k = 0; k < K; ++k)
    adaptive_row_finish<T>(W, total, seed, static_cast<T>(k), y_out[k]);
}

}  // namespace pottsops
