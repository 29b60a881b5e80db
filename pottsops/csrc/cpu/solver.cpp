// The solver on the CPU (pottsops/solver/): one step of the adaptive rule (adaptive_step, the op the
// Python loop calls) and the whole loop in one op (adaptive_solve), image by image.  Rows run in parallel;
// per-image sums go through per-row partials summed in a fixed order (deterministic for any thread count).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu/grid_kernel.h"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/unaries.h"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"
#include "cpu/solver_row.h"

namespace pottsops {
namespace {

// Rows first_row .. last_row - 1 of contiguous (B, K, H, W) planes: theta, m, v in place, y_in -> y_out,
// with the constants of image b in steps[b].
template <typename T>
void adaptive_rows(int64_t K, int64_t H, int64_t W, T* theta, T* m, T* v, const T* y_in, T* y_out, const T* grad,
                   const int64_t* seeds, const bool* seeded, const AdaptiveStep<T>* steps, int64_t first_row,
                   int64_t last_row) {
  const int64_t n = H * W;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K * W));  // small images: one thread
  at::parallel_for(first_row, last_row, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(3 * W);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, first = b * K * n + (row % H) * W, pixels = b * n + (row % H) * W;
      adaptive_row<T>(K, W, {theta + first, n}, {m + first, n}, {v + first, n}, {y_in + first, n},
                      {y_out + first, n}, {grad + first, n}, seeds + pixels, seeded + pixels, steps[b],
                      scratch.data());
    }
  });
}

void adaptive_step_cpu(const at::Tensor& theta, const at::Tensor& m, const at::Tensor& v, const at::Tensor& y,
                       const at::Tensor& grad, const at::Tensor& steps, const at::Tensor& scale,
                       const at::Tensor& seeds, const at::Tensor& seeded, at::ArrayRef<double> rule) {
  check_adaptive_step_args(theta, m, v, y, grad, steps, scale, seeds, seeded, rule);
  check_seed_ids(seeds, seeded, y.size(1));
  const AdaptiveRule r(rule);
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t* t = steps.data_ptr<int64_t>();
  const double* lr_scale = scale.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "adaptive_step_cpu", [&] {
    using T = scalar_t;
    std::vector<AdaptiveStep<T>> constants(B);
    for (int64_t b = 0; b < B; ++b) constants[b] = r.constants<T>(t[b], lr_scale[b]);
    for (int64_t b = 0; b < B; ++b) {
      if (!(lr_scale[b] > 0)) continue;  // a stopped image keeps its iterate
      adaptive_rows<T>(K, H, W, theta.data_ptr<T>(), m.data_ptr<T>(), v.data_ptr<T>(), y.data_ptr<T>(),
                       y.data_ptr<T>(), grad.data_ptr<T>(), seeds.data_ptr<int64_t>(), seeded.data_ptr<bool>(),
                       constants.data(), b * H, (b + 1) * H);
    }
  });
}

// The loop of pottsops/solver/loop.py (adaptive_loop: the same arithmetic in the same dtype, the same checks),
// one image at a time.  An image's iterate and its best labels live in two buffers: a step writes the new
// labels over the iterate, or into the other buffer while the iterate is the best (no copies; the image's
// working set stays in cache).  Images run in parallel, handed out one by one, when there are at least as
// many as threads; otherwise one after another, each with its rows in parallel.  Either way every image's
// result is the same.  Returns the best labels, their energy (B,), the best energy after each step
// (T + 1, B) (T the most steps any image ran; an image that stopped keeps its value) and the steps each
// image ran (B,).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adaptive_solve_cpu(
    const at::Tensor& y, const at::Tensor& theta, const c10::optional<at::Tensor>& image,
    const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial,
    int64_t relaxation, double eps, const at::Tensor& operand, const at::Tensor& unlabeled, const at::Tensor& seeded,
    const at::Tensor& seeds, const at::Tensor& lower, int64_t kind, double eta, double lam, double unary_eps,
    at::ArrayRef<double> rule, int64_t iters, double tol, int64_t window) {
  check_solver_tensors({{"y", &y}, {"theta", &theta}, {"operand", &operand}},
                       {{"unlabeled", &unlabeled}, {"seeded", &seeded}, {"seeds", &seeds}});
  check_adaptive_solve_args(y, seeds, seeded, lower, rule, iters, tol, window);
  check_solver_scalars(kind, eta, lam, unary_eps);
  const AdaptiveRule r(rule);
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3);
  const std::array<at::Tensor, 2> ys{y.clone(), at::empty_like(y)};
  const at::Tensor thetas = theta.clone(), m = at::zeros_like(y), v = at::zeros_like(y), grad = at::empty_like(y);
  const std::array<GridArgs, 2> args{
      make_grid_args(ys[0], image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps),
      make_grid_args(ys[1], image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps)};
  at::Tensor potts_rows = at::empty({B, H}, y.options());
  at::Tensor unary_rows = at::zeros({B, H}, y.options().dtype(at::kDouble));
  at::Tensor energy = at::empty({B}, y.options()), steps = at::zeros({B}, y.options().dtype(at::kLong));
  const at::Tensor lowest = lower.to(at::kDouble).contiguous();
  std::vector<std::vector<double>> trace(B);
  std::vector<int> best_buffer(B, 0);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "adaptive_solve_cpu", [&] {
    using T = scalar_t;
    const std::array<GridKernel<T>, 2> kernels{GridKernel<T>(args[0], true), GridKernel<T>(args[1], true)};
    const std::vector<T> go(B, static_cast<T>(lam));  // the Potts gradient and energy come scaled by lam
    const SolverRows<T> rows{potts_rows.data_ptr<T>(), unary_rows.data_ptr<double>()};
    std::vector<AdaptiveStep<T>> constants(B);
    POTTS_DISPATCH_UNARY(kind, [&] {
      POTTS_DISPATCH_RELAXATION(args[0].relaxation, [&] {
        // the energy of image b's labels in buffer c, its gradient into grad
        auto gradient = [&](int64_t b, int c) {
          std::fill(rows.potts + b * H, rows.potts + (b + 1) * H, T(0));
          solver_gradient_rows<R, U, T>(kernels[c], go.data(), operand.data_ptr<T>(), unlabeled.data_ptr<bool>(),
                                        seeded.data_ptr<bool>(), static_cast<T>(eta), static_cast<T>(unary_eps),
                                        grad.data_ptr<T>(), rows, b * H, (b + 1) * H);
          return rows.energy(b, H);
        };
        auto run = [&](int64_t b) {
          int current = 0, best = 0;
          double scale = 1.0;
          T lowest_energy = gradient(b, 0);
          std::vector<double>& seen = trace[b];
          seen.push_back(static_cast<double>(lowest_energy));
          for (int64_t t = 1; t <= iters; ++t) {
            const int next = current == best ? 1 - current : current;
            constants[b] = r.constants<T>(t, scale);
            adaptive_rows<T>(K, H, W, thetas.data_ptr<T>(), m.data_ptr<T>(), v.data_ptr<T>(),
                             ys[current].data_ptr<T>(), ys[next].data_ptr<T>(), grad.data_ptr<T>(),
                             seeds.data_ptr<int64_t>(), seeded.data_ptr<bool>(), constants.data(), b * H,
                             (b + 1) * H);
            const T value = gradient(b, next);
            current = next;
            if (value < lowest_energy) {  // false for NaN
              lowest_energy = value;
              best = next;
            }
            steps.data_ptr<int64_t>()[b] = t;
            seen.push_back(static_cast<double>(lowest_energy));
            if (t % window == 0 && t >= 2 * window) {
              scale = adaptive_window_check<double>(seen[t - window], seen[t], lowest.data_ptr<double>()[b], tol,
                                                    scale);
              if (scale == 0) break;
            }
          }
          best_buffer[b] = best;
          energy.data_ptr<T>()[b] = lowest_energy;
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
    if (best_buffer[b] == 1) out[b].copy_(ys[1][b]);
  return {out, energy, energies.to(y.scalar_type()), steps};
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CPU, m) {
  m.impl("adaptive_step", &adaptive_step_cpu);
  m.impl("adaptive_solve", &adaptive_solve_cpu);
}

}  // namespace pottsops
