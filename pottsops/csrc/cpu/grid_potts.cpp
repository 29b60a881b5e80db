// Grid and window Potts energies, gradients and affinities on the CPU: the op wrappers around GridKernel
// (cpu/grid_kernel.h, which says how the work is split).
#include <torch/library.h>

#include <vector>

#include "cpu/grid_kernel.h"
#include "pottsops/grid_args.h"
#include "pottsops/solver_args.h"
#include "pottsops/unaries.h"

namespace pottsops {
namespace {

at::Tensor grid_potts_energy_cpu(const at::Tensor& y, const c10::optional<at::Tensor>& image,
                                 const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
                                 const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
                                 at::ArrayRef<double> spatial, int64_t relaxation, double eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  const int64_t B = y.size(0), H = y.size(2);
  at::Tensor row_energy = at::empty({B * H}, y.options().dtype(accumulation_type(y.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "grid_potts_energy_cpu", [&] {
    const GridKernel<scalar_t> kernel(args, /*labels=*/true);
    auto* out = row_energy.data_ptr<at::opmath_type<scalar_t>>();
    POTTS_DISPATCH_RELAXATION(args.relaxation, [&] { kernel.template energy<R>(out); });
  });
  // Per-image sums of the per-row partials in row order: deterministic for any thread count.
  return row_energy.view({B, H}).sum(1);  // in the accumulation type: fp16's range ends at 65504
}

std::tuple<at::Tensor, at::Tensor> grid_potts_energy_backward_cpu(
    const at::Tensor& grad_energy, const at::Tensor& y, const c10::optional<at::Tensor>& image,
    const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial,
    int64_t relaxation, double eps, bool weights_grad) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_backward_args(grad_energy, args, weights_grad);
  const at::Tensor go = grad_energy.to(accumulation_type(y.scalar_type())).contiguous();
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_w = weights_grad_buffer(args, weights_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "grid_potts_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GridKernel<scalar_t> kernel(args, /*labels=*/true);
    const View4<scalar_t> out = view4<scalar_t>(grad_y);
    acc_t* gw = weights_grad ? grad_w.data_ptr<acc_t>() : nullptr;
    POTTS_DISPATCH_RELAXATION(args.relaxation, [&] { kernel.template backward<R>(go.data_ptr<acc_t>(), out, gw); });
  });
  if (weights_grad) grad_w = grad_w.to(weights->scalar_type());
  return {grad_y, grad_w};
}

std::tuple<at::Tensor, at::Tensor> grid_solver_gradient_cpu(
    const at::Tensor& y, const c10::optional<at::Tensor>& image, const c10::optional<at::Tensor>& weights,
    const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
    at::ArrayRef<double> spatial, int64_t relaxation, double eps, const at::Tensor& operand,
    const at::Tensor& unlabeled, const at::Tensor& seeded, int64_t kind, double eta, double lam, double unary_eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_grid_solver_args(y, operand, unlabeled, seeded);
  check_solver_scalars(kind, eta, lam, unary_eps);
  const int64_t B = y.size(0), H = y.size(2);
  at::Tensor grad = at::empty_like(y, at::MemoryFormat::Contiguous);
  at::Tensor potts_rows = at::zeros({B, H}, y.options());
  at::Tensor unary_rows = at::zeros({B, H}, y.options().dtype(at::kDouble));
  at::Tensor energy = at::empty({B}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "grid_solver_gradient_cpu", [&] {
    using T = scalar_t;
    const GridKernel<T> kernel(args, /*labels=*/true);
    const std::vector<T> go(B, static_cast<T>(lam));  // the Potts gradient and energy come scaled by lam
    const SolverRows<T> rows{potts_rows.data_ptr<T>(), unary_rows.data_ptr<double>()};
    POTTS_DISPATCH_UNARY(kind, [&] {
      POTTS_DISPATCH_RELAXATION(args.relaxation, [&] {
        solver_gradient_rows<R, U, T>(kernel, go.data(), operand.data_ptr<T>(), unlabeled.data_ptr<bool>(),
                                      seeded.data_ptr<bool>(), static_cast<T>(eta), static_cast<T>(unary_eps),
                                      grad.data_ptr<T>(), rows, 0, B * H);
      });
    });
    for (int64_t b = 0; b < B; ++b) energy.data_ptr<T>()[b] = rows.energy(b, H);
  });
  return {energy, grad};
}

at::Tensor grid_affinity_cpu(const at::Tensor& image, const c10::optional<at::Tensor>& mask,
                             const at::Tensor& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial) {
  const GridArgs args = make_affinity_args(image, mask, inv_two_sigma2, offsets, spatial);
  at::Tensor out = at::empty({image.size(0), args.num_offsets(), image.size(2), image.size(3)}, args.image.options());
  if (out.numel() == 0) return out;  // no pixels (W = 0 would still index a row of nothing)
  AT_DISPATCH_FLOATING_TYPES(args.image.scalar_type(), "grid_affinity_cpu", [&] {
    const GridKernel<scalar_t> kernel(args, /*labels=*/false);
    kernel.affinity(view4<scalar_t>(out));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CPU, m) {
  m.impl("grid_potts_energy", &grid_potts_energy_cpu);
  m.impl("grid_potts_energy_backward", &grid_potts_energy_backward_cpu);
  m.impl("grid_affinity", &grid_affinity_cpu);
  m.impl("grid_solver_gradient", &grid_solver_gradient_cpu);
}

}  // namespace pottsops
