// The step rule of the solver (pottsops/solver/), shared by the CPU loop (solver_row.h, cpu/solver.cpp)
// and the CUDA step kernel (cuda/solver.cu).
//
// Adaptive mirror descent: per pixel i and class k, the pseudo-logit theta (log y up to a per-pixel
// constant) moves against the centred gradient d = g - <y, g> (the gradient of the mirror step, which is
// the same for every class of a pixel up to that constant) with Adam's per-coordinate step: moments
// m, v of d, bias-corrected, theta -= lr m_hat / (sqrt(v_hat) + eps).  Each pixel's theta is then shifted
// so that its largest value is 0 and floored at log_floor, and y = softmax(theta).  Seeds get their
// one-hot labels; their theta (0 on the seed's class, log_floor elsewhere), zero moments and zero gradient
// are the caller's (then the step leaves them as they are).
#pragma once

#include <cmath>

#include "pottsops/relaxations.h"

namespace pottsops {

// The constants of one step of one image: its step number t (1, 2, ...) folds Adam's bias corrections
// into lr_t = lr / (1 - beta1^t) and root = 1 / sqrt(1 - beta2^t), so that
// lr m_hat / (sqrt(v_hat) + eps) = lr_t m / (sqrt(v) root + eps); lr is the rule's times the image's scale
// (adaptive_window_check).
template <typename T>
struct AdaptiveStep {
  T lr_t, root, beta1, beta2, eps, log_floor;
};

template <typename T>
POTTS_HD AdaptiveStep<T> adaptive_step_constants(double t, double lr, double beta1, double beta2, double eps,
                                                 double log_floor) {
  return {static_cast<T>(lr / (1.0 - pow(beta1, t))), static_cast<T>(1.0 / sqrt(1.0 - pow(beta2, t))),
          static_cast<T>(beta1), static_cast<T>(beta2), static_cast<T>(eps), static_cast<T>(log_floor)};
}

// The moments and the pseudo-logit of one class after a step with centred gradient d.
template <typename T>
POTTS_HD T adaptive_theta(T theta, T d, T& m, T& v, const AdaptiveStep<T>& s) {
  m = s.beta1 * m + (T(1) - s.beta1) * d;
  v = s.beta2 * v + (T(1) - s.beta2) * d * d;
  return theta - s.lr_t * m / (potts_sqrt(v) * s.root + s.eps);
}

// The normalised pseudo-logit: shifted by the pixel's largest value top, floored.
template <typename T>
POTTS_HD T adaptive_normalised(T theta, T top, T log_floor) {
  const T shifted = theta - top;
  return shifted > log_floor ? shifted : log_floor;
}

// One step at one pixel, the form the CUDA kernel runs: load(k, theta, y, g, m, v) gives class k's values,
// store(k, theta, m, v, y) takes the new ones.  Three passes over k: the centred gradient's mean, the
// moments and theta (largest theta on the way), then theta normalised and y.
template <typename T, typename Load, typename Store>
POTTS_HD void adaptive_pixel(int64_t K, bool seeded, int64_t seed, const AdaptiveStep<T>& s, Load&& load,
                             Store&& store) {
  if (seeded) {
    for (int64_t k = 0; k < K; ++k) {
      T theta, y, g, m, v;
      load(k, theta, y, g, m, v);
      store(k, theta, m, v, k == seed ? T(1) : T(0));
    }
    return;
  }
  T mean = 0;
  for (int64_t k = 0; k < K; ++k) {
    T theta, y, g, m, v;
    load(k, theta, y, g, m, v);
    mean += y * g;
  }
  T top = 0;
  for (int64_t k = 0; k < K; ++k) {
    T theta, y, g, m, v;
    load(k, theta, y, g, m, v);
    theta = adaptive_theta<T>(theta, g - mean, m, v, s);
    top = k == 0 || theta > top ? theta : top;
    store(k, theta, m, v, y);
  }
  T total = 0;
  for (int64_t k = 0; k < K; ++k) {
    T theta, y, g, m, v;
    load(k, theta, y, g, m, v);
    total += potts_exp(adaptive_normalised<T>(theta, top, s.log_floor));
  }
  const T inv_total = T(1) / total;
  for (int64_t k = 0; k < K; ++k) {
    T theta, y, g, m, v;
    load(k, theta, y, g, m, v);
    theta = adaptive_normalised<T>(theta, top, s.log_floor);
    store(k, theta, m, v, potts_exp(theta) * inv_total);
  }
}

// adaptive_pixel on contiguous (B, K, H, W) tensors, the pixel's class k at base + k * n (base = b K n + i):
// the CUDA kernel's form, which the host emulation of it runs too.
template <typename T>
POTTS_HD void adaptive_pixel_strided(int64_t K, int64_t n, int64_t base, bool seeded, int64_t seed,
                                     const AdaptiveStep<T>& s, T* __restrict__ theta, T* __restrict__ m,
                                     T* __restrict__ v, T* __restrict__ y, const T* __restrict__ grad) {
  adaptive_pixel<T>(
      K, seeded, seed, s,
      [&](int64_t k, T& t, T& yk, T& g, T& mk, T& vk) {
        const int64_t at = base + k * n;
        t = theta[at], yk = y[at], g = grad[at], mk = m[at], vk = v[at];
      },
      [&](int64_t k, T t, T mk, T vk, T yk) {
        const int64_t at = base + k * n;
        theta[at] = t, m[at] = mk, v[at] = vk, y[at] = yk;
      });
}

// The check at the end of each window of steps, from the second window on (the first steps from a good
// start may not descend yet): when an image's lowest energy fell by at most tol times its excess over the
// unary's lower bound (the energy less its constants) during the window, its learning rate is halved, or,
// once it has been halved kMaxHalvings times, the image stops.  Returns the new lr scale; 0: stop.
constexpr int kMaxHalvings = 3;

template <typename T>
POTTS_HD T adaptive_window_check(T best_window_ago, T best, T lower, T tol, T lr_scale) {
  const T excess = best > lower ? best - lower : T(0);
  if (best_window_ago - best > tol * excess) return lr_scale;
  return lr_scale > T(1) / T(1 << kMaxHalvings) ? lr_scale * T(0.5) : T(0);
}

}  // namespace pottsops
