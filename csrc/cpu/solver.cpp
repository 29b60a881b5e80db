// The fused solver on the CPU: the step ops (one pass per op over contiguous (B, K, H, W) tensors, rows in
// parallel) and the whole mirror-descent loop (mirror_solve); per-image reductions through per-row
// partials summed in a fixed order (deterministic for any thread count).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/grid_kernel.h"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"
#include "pottsops/solver_row.h"

namespace pottsops {
namespace {

// Sum (or maximum) over the rows of each image of a (B, H) double tensor, in order.
at::Tensor per_image(const at::Tensor& rows, bool maximum) {
  const int64_t B = rows.size(0), H = rows.size(1);
  at::Tensor out = at::empty({B}, rows.options());
  const double* r = rows.data_ptr<double>();
  double* o = out.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    double acc = 0;
    for (int64_t h = 0; h < H; ++h) acc = maximum ? std::max(acc, r[b * H + h]) : acc + r[b * H + h];
    o[b] = acc;
  }
  return out;
}

// Both ops work one image row (b, h) at a time with w innermost, so that the loops over w vectorise; the
// per-pixel math is that of solver_math.h (the CUDA kernels), written here over rows (solver_row.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor> solver_gradient_cpu(const at::Tensor& y, const at::Tensor& operand,
                                                                   const at::Tensor& potts_grad,
                                                                   const at::Tensor& unlabeled,
                                                                   const at::Tensor& seeded, int64_t kind, double eta,
                                                                   double lam, double eps) {
  check_solver_tensors({{"y", &y}, {"operand", &operand}, {"potts_grad", &potts_grad}},
                       {{"unlabeled", &unlabeled}, {"seeded", &seeded}});
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3), n = H * W;
  at::Tensor grad = at::empty_like(y);
  at::Tensor row_value = at::zeros({B, H}, y.options().dtype(at::kDouble));
  at::Tensor row_spread = at::zeros({B, H}, y.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "solver_gradient_cpu", [&] {
    using T = scalar_t;
    const T *py = y.data_ptr<T>(), *po = operand.data_ptr<T>(), *pg = potts_grad.data_ptr<T>();
    const bool *pu = unlabeled.data_ptr<bool>(), *ps = seeded.data_ptr<bool>();
    T* out = grad.data_ptr<T>();
    double *value = row_value.data_ptr<double>(), *spread = row_spread.data_ptr<double>();
    POTTS_DISPATCH_UNARY(kind, [&] {
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> scratch(6 * W);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / H, first = b * K * n + (row % H) * W, pixels = b * n + (row % H) * W;
          const SolverRowOut r = solver_row<U, T>(
              K, W, {py + first, n}, {po + first, n}, {pg + first, n}, pu + pixels, ps + pixels,
              static_cast<T>(eta), static_cast<T>(lam), static_cast<T>(eps), {out + first, n}, scratch.data());
          value[row] = r.value;
          spread[row] = r.spread;
        }
      });
    });
  });
  return {per_image(row_value, false).to(y.scalar_type()), grad, per_image(row_spread, true).to(y.scalar_type())};
}

// One mirror step of rows first_row .. last_row - 1 of contiguous (B, K, H, W) planes, scale per image.
template <typename T>
void mirror_rows(int64_t K, int64_t H, int64_t W, const T* log_y, const T* grad, const T* scale, const int64_t* seeds,
                 const bool* seeded, T log_floor, T* new_log, T* new_y, int64_t first_row, int64_t last_row) {
  const int64_t n = H * W;
  at::parallel_for(first_row, last_row, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(3 * W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, first = b * K * n + (row % H) * W, pixels = b * n + (row % H) * W;
      mirror_row<T>(K, W, {log_y + first, n}, {grad + first, n}, scale[b], seeds + pixels, seeded + pixels, log_floor,
                    {new_log + first, n}, {new_y + first, n}, scratch.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor> mirror_step_cpu(const at::Tensor& log_y, const at::Tensor& grad,
                                                   const at::Tensor& scale, const at::Tensor& seeds,
                                                   const at::Tensor& seeded, double log_floor) {
  check_solver_tensors({{"log_y", &log_y}, {"grad", &grad}}, {{"seeds", &seeds}, {"seeded", &seeded}});
  check_mirror_args(log_y, scale, seeds);
  const int64_t B = log_y.size(0), K = log_y.size(1), H = log_y.size(2), W = log_y.size(3);
  at::Tensor new_log = at::empty_like(log_y), new_y = at::empty_like(log_y);
  const at::Tensor scales = scale.to(log_y.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(log_y.scalar_type(), "mirror_step_cpu", [&] {
    using T = scalar_t;
    mirror_rows<T>(K, H, W, log_y.data_ptr<T>(), grad.data_ptr<T>(), scales.data_ptr<T>(), seeds.data_ptr<int64_t>(),
                   seeded.data_ptr<bool>(), static_cast<T>(log_floor), new_log.data_ptr<T>(), new_y.data_ptr<T>(), 0,
                   B * H);
  });
  return {new_log, new_y};
}

// The whole mirror-descent solve of pottsops/solve.py (_mirror: the same arithmetic in the same dtype, the
// same step control), one image at a time: an image's iterate and its trial live in two buffers, and an
// accepted step swaps them (no copy, no allocation per step; the image's working set stays in cache).
// Images run in parallel, handed out one by one, when there are at least as many as threads; otherwise one
// after another, each with its rows in parallel.  Either way every image's result is the same.
// Returns y, the energy of y (B,), the energy after each step (T + 1, B) (T the most steps any image
// ran; an image that stopped keeps its energy) and the steps each image ran (B,).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mirror_solve_cpu(
    const at::Tensor& y, const at::Tensor& log_y, const c10::optional<at::Tensor>& image,
    const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial,
    int64_t relaxation, double eps, const at::Tensor& operand, const at::Tensor& unlabeled, const at::Tensor& seeded,
    const at::Tensor& seeds, int64_t kind, double eta, double lam, double unary_eps, double log_floor, double step,
    int64_t iters, double tol) {
  check_solver_tensors({{"y", &y}, {"log_y", &log_y}, {"operand", &operand}},
                       {{"unlabeled", &unlabeled}, {"seeded", &seeded}, {"seeds", &seeds}});
  TORCH_CHECK(seeds.scalar_type() == at::kLong, "seeds: expected int64, got ", seeds.scalar_type());
  TORCH_CHECK(iters >= 0, "iters: expected an integer >= 0, got ", iters);
  TORCH_CHECK(step > 0, "step: expected a number > 0, got ", step);
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3);
  const std::array<at::Tensor, 2> ys{y.clone(), at::empty_like(y)}, logs{log_y.clone(), at::empty_like(y)},
      grads{at::empty_like(y), at::empty_like(y)};
  const std::array<GridArgs, 2> args{
      make_grid_args(ys[0], image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps),
      make_grid_args(ys[1], image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps)};
  at::Tensor potts_rows = at::empty({B, H}, y.options());
  at::Tensor unary_rows = at::zeros({B, H}, y.options().dtype(at::kDouble)), spread_rows = at::zeros_like(unary_rows);
  at::Tensor energy = at::empty({B}, y.options()), steps = at::zeros({B}, y.options().dtype(at::kLong));
  std::vector<std::vector<double>> trace(B);
  std::vector<int> current(B, 0);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "mirror_solve_cpu", [&] {
    using T = scalar_t;
    const std::array<GridKernel<T>, 2> kernels{GridKernel<T>(args[0], true), GridKernel<T>(args[1], true)};
    const std::vector<T> go(B, static_cast<T>(lam));  // the Potts gradient and energy come scaled by lam
    const SolverRows<T> rows{potts_rows.data_ptr<T>(), unary_rows.data_ptr<double>(), spread_rows.data_ptr<double>()};
    std::vector<T> scale(B, T(0));
    const T tiny = std::numeric_limits<T>::min(), floor = static_cast<T>(log_floor);
    POTTS_DISPATCH_UNARY(kind, [&] {
      POTTS_DISPATCH_RELAXATION(args[0].relaxation, [&] {
        // energy and spread of image b's labels in buffer c, its gradient into grads[c]
        auto gradient = [&](int64_t b, int c, T& value, T& spread) {
          std::fill(rows.potts + b * H, rows.potts + (b + 1) * H, T(0));
          solver_gradient_rows<R, U, T>(kernels[c], go.data(), operand.data_ptr<T>(), unlabeled.data_ptr<bool>(),
                                        seeded.data_ptr<bool>(), static_cast<T>(eta), static_cast<T>(unary_eps),
                                        grads[c].data_ptr<T>(), rows, b * H, (b + 1) * H);
          value = rows.energy(b, H);
          spread = rows.widest(b, H);
        };
        auto run = [&](int64_t b) {
          int c = 0;
          T value, spread, trial_value, trial_spread, tau = static_cast<T>(step);
          gradient(b, c, value, spread);
          trace[b].push_back(static_cast<double>(value));
          for (int64_t t = 0; t < iters; ++t) {
            scale[b] = tau / std::max(spread, tiny);
            mirror_rows<T>(K, H, W, logs[c].data_ptr<T>(), grads[c].data_ptr<T>(), scale.data(),
                           seeds.data_ptr<int64_t>(), seeded.data_ptr<bool>(), floor, logs[1 - c].data_ptr<T>(),
                           ys[1 - c].data_ptr<T>(), b * H, (b + 1) * H);
            gradient(b, 1 - c, trial_value, trial_spread);
            const StepDecision<T> decision = step_decision<T>(value, trial_value, tau, static_cast<T>(tol));
            tau = decision.tau;
            steps.data_ptr<int64_t>()[b] += 1;
            if (decision.accept) {
              c = 1 - c;
              value = trial_value;
              spread = trial_spread;
            }
            trace[b].push_back(static_cast<double>(value));
            if (decision.stop) break;
          }
          current[b] = c;
          energy.data_ptr<T>()[b] = value;
        };
        if (B >= at::get_num_threads()) {
          std::atomic<int64_t> next{0};
          at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
            for (int64_t b = next++; b < B; b = next++) run(b);
          });
        } else {
          for (int64_t b = 0; b < B; ++b) run(b);
        }
      });
    });
  });
  size_t longest = 0;
  for (const auto& t : trace) longest = std::max(longest, t.size());
  at::Tensor energies = at::empty({static_cast<int64_t>(longest), B}, y.options().dtype(at::kDouble));
  double* e = energies.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    for (size_t t = 0; t < longest; ++t) e[t * B + b] = trace[b][std::min(t, trace[b].size() - 1)];
  at::Tensor out = ys[0];
  for (int64_t b = 0; b < B; ++b)
    if (current[b] == 1) out[b].copy_(ys[1][b]);
  return {out, energy, energies.to(y.scalar_type()), steps};
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CPU, m) {
  m.impl("solver_gradient", &solver_gradient_cpu);
  m.impl("mirror_step", &mirror_step_cpu);
  m.impl("mirror_solve", &mirror_solve_cpu);
}

}  // namespace pottsops
