// The fused solver step on the CPU: one pass per op over contiguous (B, K, H, W) tensors, pixels in
// parallel, per-image reductions through per-row partials summed in a fixed order (deterministic).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "pottsops/relaxations.h"
#include "pottsops/solver_args.h"
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

std::tuple<at::Tensor, at::Tensor> mirror_step_cpu(const at::Tensor& log_y, const at::Tensor& grad,
                                                   const at::Tensor& scale, const at::Tensor& seeds,
                                                   const at::Tensor& seeded, double log_floor) {
  check_solver_tensors({{"log_y", &log_y}, {"grad", &grad}}, {{"seeds", &seeds}, {"seeded", &seeded}});
  check_mirror_args(log_y, scale, seeds);
  const int64_t B = log_y.size(0), K = log_y.size(1), H = log_y.size(2), W = log_y.size(3), n = H * W;
  at::Tensor new_log = at::empty_like(log_y), new_y = at::empty_like(log_y);
  const at::Tensor scales = scale.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES(log_y.scalar_type(), "mirror_step_cpu", [&] {
    using T = scalar_t;
    const T *pl = log_y.data_ptr<T>(), *pg = grad.data_ptr<T>();
    const int64_t* pseed = seeds.data_ptr<int64_t>();
    const bool* ps = seeded.data_ptr<bool>();
    const double* psc = scales.data_ptr<double>();
    T *ol = new_log.data_ptr<T>(), *oy = new_y.data_ptr<T>();
    const T floor = static_cast<T>(log_floor);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(3 * W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / H, first = b * K * n + (row % H) * W, pixels = b * n + (row % H) * W;
        mirror_row<T>(K, W, {pl + first, n}, {pg + first, n}, static_cast<T>(psc[b]), pseed + pixels, ps + pixels,
                      floor, {ol + first, n}, {oy + first, n}, scratch.data());
      }
    });
  });
  return {new_log, new_y};
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CPU, m) {
  m.impl("solver_gradient", &solver_gradient_cpu);
  m.impl("mirror_step", &mirror_step_cpu);
}

}  // namespace pottsops
