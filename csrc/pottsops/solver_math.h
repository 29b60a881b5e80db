// Per-pixel work of the fused solver step (pottsops/solve.py), shared by the CPU and CUDA kernels.
//
// solver_pixel: the gradient of eta H(y, sigma) + lam Potts(y) at one pixel, from the Potts gradient
// (computed by the grid backward kernel) and the unary's derivative.  Each unary needs one operand per
// class: sigma for cce and rce, log sigma for ce (the formulas of relaxations.h with z = log sigma, lse = 0);
// it is passed as both z and sigma, and each formula reads the one it uses.
//
// mirror_pixel: one entropic mirror-descent step at one pixel, log y <- log_softmax(log y - scale g),
// floored, or the one-hot seed on scribbled pixels.
//
// step_decision: the per-image step control of the mirror-descent loop, for the CPU loop (mirror_solve)
// and the CUDA one-launch step.
#pragma once

#include <cmath>

#include "pottsops/relaxations.h"

namespace pottsops {

#ifndef __CUDACC__
using std::isfinite;  // a CUDA built-in on the device
#endif

struct SolverPixelOut {
  double value;   // eta H at this pixel (0 where the unary does not apply)
  double spread;  // max_k g_k - min_k g_k (0 on seeds)
};

// The K values of one pixel come through load and go out through store.
template <int U, typename T, typename Load, typename Store>
POTTS_HD SolverPixelOut solver_pixel(int64_t K, bool unlabeled, bool seeded, T eta, T lam, T eps, Load&& load,
                                     Store&& store) {
  // load(k) -> (y_k, operand_k, potts_grad_k); store(k, g_k)
  SolverPixelOut out{0.0, 0.0};
  if (seeded) {
    for (int64_t k = 0; k < K; ++k) store(k, T(0));
    return out;
  }
  T dot = 0, sum_y = 0;
  if (unlabeled) {
    for (int64_t k = 0; k < K; ++k) {
      T y, operand, pg;
      load(k, y, operand, pg);
      dot += unary_dot_term<U, T>(operand, y, operand, eps);
      sum_y += y;
    }
    out.value = static_cast<double>(eta * unary_value<U, T>(dot, sum_y, T(0), eps));
  }
  T lo = 0, hi = 0;
  for (int64_t k = 0; k < K; ++k) {
    T y, operand, pg;
    load(k, y, operand, pg);
    T g = lam * pg;
    if (unlabeled) g += eta * unary_grad_label<U, T>(operand, y, operand, dot, T(0), eps);
    store(k, g);
    lo = k == 0 ? g : (g < lo ? g : lo);
    hi = k == 0 ? g : (g > hi ? g : hi);
  }
  out.spread = static_cast<double>(hi - lo);
  return out;
}

// One mirror step at one pixel: load(k) -> (log y_k, g_k); store(k, new log y_k, new y_k).
template <typename T, typename Load, typename Store>
POTTS_HD void mirror_pixel(int64_t K, bool seeded, int64_t seed, T scale, T log_floor, Load&& load, Store&& store) {
  if (seeded) {
    for (int64_t k = 0; k < K; ++k) store(k, k == seed ? T(0) : log_floor, k == seed ? T(1) : T(0));
    return;
  }
  T m = 0;
  for (int64_t k = 0; k < K; ++k) {
    T log_y, g;
    load(k, log_y, g);
    const T v = log_y - scale * g;
    m = k == 0 ? v : (v > m ? v : m);
  }
  T total = 0;
  for (int64_t k = 0; k < K; ++k) {
    T log_y, g;
    load(k, log_y, g);
    total += potts_exp(log_y - scale * g - m);
  }
  const T lse = m + potts_log(total);
  for (int64_t k = 0; k < K; ++k) {
    T log_y, g;
    load(k, log_y, g);
    T v = log_y - scale * g - lse;
    v = v < log_floor ? log_floor : v;
    store(k, v, potts_exp(v));
  }
}

// pottsops/solve.py's _MirrorState._control for one image: a trial of energy `trial` is accepted if finite
// and not above the iterate's `value`; tau grows x1.25 after an accepted step and halves after a rejected
// one; the image stops after an accepted step of relative change < tol, or once tau <= 1e-8.
template <typename T>
struct StepDecision {
  bool accept, stop;
  T tau;  // the next step's
};

template <typename T>
POTTS_HD StepDecision<T> step_decision(T value, T trial, T tau, T tol) {
  const bool accept = isfinite(trial) && trial <= value;
  const T magnitude = value < 0 ? -value : value, difference = value > trial ? value - trial : trial - value;
  const T change = difference / (magnitude > T(1e-30) ? magnitude : T(1e-30));
  const T next_tau = accept ? tau * T(1.25) : tau * T(0.5);
  return {accept, (accept && change < tol) || !(next_tau > T(1e-8)), next_tau};
}

}  // namespace pottsops
