// The device side of the one-launch solver step (solver.cu's mirror_fused_step): the labels one mirror
// step ahead, the work of one thread and the step control of the block that finishes an image.  Compiled
// for the host too (pottsops/device_code.h).
#pragma once

#include <cmath>
#include <limits>

#include "cuda/grid_device.cuh"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"

namespace pottsops {

// The labels one mirror step ahead of an iterate, computed where they are read instead of stored and read
// back: on a free pixel y_k = exp(max(log y_k - s g_k - lse, log_floor)), lse the log-sum-exp over k of
// log y - s g, on a seeded pixel the one-hot seed; mirror_pixel's result (solver_math.h).  log_y and grad
// are the iterate's, contiguous (B, K, H, W); s is the image's step (one image per block).
template <typename scalar_t>
struct MirroredLabels {
  struct Pixel {
    int64_t base;  // index of class 0 of the pixel in log_y and grad
    int64_t seed;  // the seed's class on seeded pixels, -1 elsewhere
    scalar_t lse;
  };
  const scalar_t* __restrict__ log_y;
  const scalar_t* __restrict__ grad;
  const int64_t* __restrict__ seeds;
  const bool* __restrict__ seeded;
  int64_t K, n, W;
  scalar_t s, log_floor;

  POTTS_DEVICE Pixel at(int64_t b, int64_t h, int64_t w) const {
    const int64_t i = h * W + w;
    Pixel p{b * K * n + i, seeded[b * n + i] ? seeds[b * n + i] : int64_t(-1), scalar_t(0)};
    if (p.seed >= 0) return p;
    scalar_t m = 0;
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t v = log_y[p.base + k * n] - s * grad[p.base + k * n];
      m = k == 0 ? v : (v > m ? v : m);
    }
    scalar_t total = 0;
    for (int64_t k = 0; k < K; ++k) total += potts_exp(log_y[p.base + k * n] - s * grad[p.base + k * n] - m);
    p.lse = m + potts_log(total);
    return p;
  }

  POTTS_DEVICE scalar_t log_label(const Pixel& p, int64_t k) const {
    if (p.seed >= 0) return k == p.seed ? scalar_t(0) : log_floor;
    const scalar_t v = log_y[p.base + k * n] - s * grad[p.base + k * n] - p.lse;
    return v < log_floor ? log_floor : v;
  }

  POTTS_DEVICE scalar_t operator()(const Pixel& p, int64_t k) const {
    if (p.seed >= 0) return k == p.seed ? scalar_t(1) : scalar_t(0);
    return potts_exp(log_label(p, k));
  }
};

// The per-image state of the one-launch step: columns of a (B, kStateColumns) double tensor, each value a
// scalar_t or a small integer held exactly.  kCurrent: which of the two buffers holds the iterate.
enum StateColumn { kCurrent, kTau, kEnergy, kSpread, kActive, kSteps, kAccepted, kStateColumns };

// The trial labels of image b from its state row own: the iterate's buffers (each buffer holds `size`
// values, all images) and the step tau / spread.
template <typename scalar_t>
POTTS_DEVICE MirroredLabels<scalar_t> trial_labels(const DeviceGrid<scalar_t>& g, const double* own,
                                                   const scalar_t* log_buffers, const scalar_t* grad_buffers,
                                                   int64_t size, const int64_t* seeds, const bool* seeded,
                                                   scalar_t log_floor) {
  const int c = own[kCurrent] != 0 ? 1 : 0;
  const scalar_t tau = static_cast<scalar_t>(own[kTau]), spread = static_cast<scalar_t>(own[kSpread]);
  const scalar_t tiny = std::numeric_limits<scalar_t>::min();
  return {log_buffers + c * size, grad_buffers + c * size, seeds, seeded, g.K, g.H * g.W, g.W,
          tau / (spread > tiny ? spread : tiny), log_floor};
}

// The work of one thread: pixel i of image b, its trial log y into log_out and the gradient there into
// grad_out (the other buffer, at the pixel's class 0; classes n apart); energy and spread as in
// solver_gradient_pixel.
template <int R, int U, int KMAX, typename scalar_t>
POTTS_DEVICE void mirror_fused_pixel(const DeviceGrid<scalar_t>& g, const MirroredLabels<scalar_t>& labels,
                                     const PairTable<scalar_t>& pairs, const scalar_t* __restrict__ operand,
                                     const bool* __restrict__ unlabeled, const bool* __restrict__ seeded,
                                     scalar_t eta, scalar_t lam, scalar_t unary_eps, int64_t b, int64_t i,
                                     scalar_t* __restrict__ log_out, scalar_t* __restrict__ grad_out,
                                     scalar_t& energy, scalar_t& spread) {
  const int64_t n = g.H * g.W;
  solver_gradient_pixel<R, U, KMAX, scalar_t>(
      g, labels, pairs, operand, unlabeled, seeded, eta, lam, unary_eps, b, i,
      [&](int64_t k, scalar_t gk) { grad_out[k * n] = gk; }, energy, spread);
  const auto p = labels.at(b, i / g.W, i % g.W);
  for (int64_t k = 0; k < g.K; ++k) log_out[k * n] = labels.log_label(p, k);
}

// step_decision (solver_math.h) on image own's state row, from its trial's energy total and largest spread
// widest: accept (swap the buffers) or reject, tau, steps, active.  Returns the energy after the step.
template <typename scalar_t>
POTTS_DEVICE scalar_t mirror_control(double* own, double total, double widest, scalar_t tol) {
  const scalar_t trial = static_cast<scalar_t>(total);
  const StepDecision<scalar_t> step = step_decision<scalar_t>(static_cast<scalar_t>(own[kEnergy]), trial,
                                                              static_cast<scalar_t>(own[kTau]), tol);
  own[kTau] = static_cast<double>(step.tau);
  own[kSteps] += 1;
  if (step.accept) {
    own[kCurrent] = own[kCurrent] != 0 ? 0 : 1;
    own[kEnergy] = static_cast<double>(trial);
    own[kSpread] = static_cast<double>(static_cast<scalar_t>(widest));
    own[kAccepted] += 1;
  }
  own[kActive] = step.stop ? 0 : 1;
  return static_cast<scalar_t>(own[kEnergy]);
}

// mirror_fused_step's arguments (csrc/ops.cpp), checked on the host.
inline void check_fused_step_args(const at::Tensor& log_buffers, const at::Tensor& grad_buffers,
                                  const at::Tensor& state, const at::Tensor& arrived, const at::Tensor& trace_row,
                                  const at::Tensor& operand, const at::Tensor& unlabeled, const at::Tensor& seeded,
                                  const at::Tensor& seeds) {
  TORCH_CHECK(log_buffers.dim() == 5 && log_buffers.size(0) == 2 && log_buffers.is_contiguous(),
              "log_buffers: expected a contiguous (2, B, K, H, W) tensor, got shape ", log_buffers.sizes());
  const at::Tensor log_y = log_buffers[0], grad = grad_buffers[0];
  check_solver_tensors({{"log_buffers", &log_y}, {"grad_buffers", &grad}, {"operand", &operand}},
                       {{"unlabeled", &unlabeled}, {"seeded", &seeded}, {"seeds", &seeds}});
  TORCH_CHECK(grad_buffers.sizes() == log_buffers.sizes() && grad_buffers.is_contiguous(),
              "grad_buffers: expected the shape of log_buffers ", log_buffers.sizes(), ", got ", grad_buffers.sizes());
  TORCH_CHECK(seeds.scalar_type() == at::kLong, "seeds: expected int64, got ", seeds.scalar_type());
  const int64_t B = log_y.size(0);
  TORCH_CHECK(state.scalar_type() == at::kDouble && state.is_contiguous() && state.dim() == 2 && state.size(0) == B &&
                  state.size(1) == kStateColumns && state.device() == log_y.device(),
              "state: expected a contiguous float64 (", B, ", ", static_cast<int>(kStateColumns), ") tensor on ",
              log_y.device(), ", got ", state.scalar_type(), " of shape ", state.sizes());
  TORCH_CHECK(arrived.scalar_type() == at::kInt && arrived.is_contiguous() && arrived.numel() == B &&
                  arrived.device() == log_y.device(),
              "arrived: expected a contiguous int32 (", B, ") tensor of zeros on ", log_y.device());
  TORCH_CHECK(trace_row.scalar_type() == log_y.scalar_type() && trace_row.is_contiguous() && trace_row.numel() == B &&
                  trace_row.device() == log_y.device(),
              "trace_row: expected a contiguous ", log_y.scalar_type(), " (", B, ") tensor on ", log_y.device());
}

}  // namespace pottsops
