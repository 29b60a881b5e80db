// The CUDA grid, unary and solver kernels' device code (cuda/grid_device.cuh, unary_device.cuh and the
// step rule's adaptive_pixel in pottsops/solver_math.h) compiled for the host and run in the kernels'
// launch shape: per image, blocks of kThreads pixels one after another, a block's energy summed over its
// threads, then the blocks' partials summed in order.  CI has no GPU, so this is how the code every CUDA
// kernel runs per pixel gets tested there (tests/test_device_emulation.py: against the reference ops and
// the CPU loop).  Not tested this way: what nvcc makes of it and the cub reductions' order.
//
// Registered as pottsops_emulated::<op> (CPU, float64 only) with the implementations of grid_potts.cu,
// unary.cu and solver.cu; tests give them the schemas of the pottsops ops of the same names.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cuda/grid_device.cuh"
#include "cuda/unary_device.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/device_code.h"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"
#include "pottsops/unary_args.h"
#include "pottsops/unaries.h"

namespace pottsops {
namespace {

void check_double(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kDouble, name, ": the emulated device code runs float64 only, got ",
              t.scalar_type());
}

// Runs thread(b, i) for the pixels i of block `block` of image b and sums its double results.
template <typename Thread>
double run_block(int64_t b, int64_t block, int64_t n, Thread&& thread) {
  double total = 0;
  for (int64_t i = block * kThreads; i < (block + 1) * kThreads && i < n; ++i) total += thread(b, i);
  return total;
}

int64_t block_count(int64_t n) { return (n + kThreads - 1) / kThreads; }

at::Tensor grid_potts_energy_emulated(const at::Tensor& y, const c10::optional<at::Tensor>& image,
                                      const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
                                      at::ArrayRef<double> spatial, int64_t relaxation, double eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_double(y, "y");
  const int64_t B = y.size(0), n = y.size(2) * y.size(3), blocks = block_count(n);
  at::Tensor partial = at::zeros({B, blocks}, y.options());
  const DeviceGrid<double> g = device_grid<double>(args, y);
  const PairTable<double> pairs = pair_table<double>(args);
  double* out = partial.data_ptr<double>();
  POTTS_DISPATCH_RELAXATION(args.relaxation, [&] {
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j)
        out[j] = run_block(j / blocks, j % blocks, n,
                           [&](int64_t b, int64_t i) { return energy_pixel<R, double>(g, pairs, b, i); });
    });
  });
  return partial.sum(1);
}

std::tuple<at::Tensor, at::Tensor> grid_potts_energy_backward_emulated(
    const at::Tensor& grad_energy, const at::Tensor& y, const c10::optional<at::Tensor>& image,
    const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial,
    int64_t relaxation, double eps, bool weights_grad) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_backward_args(grad_energy, args, weights_grad);
  check_double(y, "y");
  const at::Tensor go = grad_energy.to(at::kDouble).contiguous();
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_w = weights_grad_buffer(args, weights_grad);
  const int64_t B = y.size(0), n = y.size(2) * y.size(3);
  const DeviceGrid<double> g = device_grid<double>(args, y);
  const PairTable<double> pairs = pair_table<double>(args);
  const View4<double> out = view4<double>(grad_y);
  double* gw = weights_grad ? grad_w.data_ptr<double>() : nullptr;
  const double* go_data = go.data_ptr<double>();
  POTTS_DISPATCH_RELAXATION(args.relaxation, [&] {
    dispatch_kmax(y.size(1), [&](auto kmax) {
      at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j)
          backward_pixel<R, decltype(kmax)::value, double>(g, pairs, go_data[j / n], out, gw, j / n, j % n);
      });
    });
  });
  if (weights_grad) grad_w = grad_w.to(weights->scalar_type());
  return {grad_y, grad_w};
}

at::Tensor grid_affinity_emulated(const at::Tensor& image, const c10::optional<at::Tensor>& mask,
                                  const at::Tensor& inv_two_sigma2, at::IntArrayRef offsets,
                                  at::ArrayRef<double> spatial) {
  const GridArgs args = make_affinity_args(image, mask, inv_two_sigma2, offsets, spatial);
  check_double(args.image, "image");
  const int64_t B = image.size(0), n = image.size(2) * image.size(3);
  at::Tensor out = at::empty({B, args.num_offsets(), image.size(2), image.size(3)}, args.image.options());
  const DeviceGrid<double> g = device_grid<double>(args, image);
  const PairTable<double> pairs = pair_table<double>(args);
  const View4<double> view = view4<double>(out);
  at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) affinity_pixel<double>(g, pairs, view, j / n, j % n);
  });
  return out;
}

at::Tensor unary_loss_emulated(const at::Tensor& logits, const at::Tensor& y, const c10::optional<at::Tensor>& mask,
                               int64_t kind, double eps) {
  const UnaryArgs args = make_unary_args(logits, y, mask, kind, eps);
  check_double(logits, "logits");
  const int64_t B = logits.size(0), n = logits.size(2) * logits.size(3);
  at::Tensor loss = at::empty({B, logits.size(2), logits.size(3)}, logits.options());
  const DeviceUnary<double> u = device_unary<double>(args);
  const View4<double> out = pixel_view<double>(loss);
  POTTS_DISPATCH_UNARY(args.kind, [&] {
    at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) unary_forward_pixel<U, double>(u, out, j / n, j % n);
    });
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> unary_loss_backward_emulated(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                                const at::Tensor& y,
                                                                const c10::optional<at::Tensor>& mask, int64_t kind,
                                                                double eps) {
  const UnaryArgs args = make_unary_args(logits, y, mask, kind, eps);
  check_unary_grad(grad_loss, logits);
  check_double(logits, "logits");
  const at::Tensor go = grad_loss.to(at::kDouble);
  at::Tensor grad_z = at::empty_like(logits), grad_y = at::empty_like(y);
  const int64_t B = logits.size(0), n = logits.size(2) * logits.size(3);
  const DeviceUnary<double> u = device_unary<double>(args);
  const View4<const double> g = const_pixel_view<double>(go);
  const View4<double> gz = view4<double>(grad_z), gy = view4<double>(grad_y);
  POTTS_DISPATCH_UNARY(args.kind, [&] {
    at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) unary_backward_pixel<U, double>(u, g, gz, gy, j / n, j % n);
    });
  });
  return {grad_z, grad_y};
}

std::tuple<at::Tensor, at::Tensor> grid_solver_gradient_emulated(
    const at::Tensor& y, const c10::optional<at::Tensor>& image, const c10::optional<at::Tensor>& weights,
    const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
    at::ArrayRef<double> spatial, int64_t relaxation, double eps, const at::Tensor& operand,
    const at::Tensor& unlabeled, const at::Tensor& seeded, int64_t kind, double eta, double lam, double unary_eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_grid_solver_args(y, operand, unlabeled, seeded);
  check_solver_scalars(kind, eta, lam, unary_eps);
  check_double(y, "y");
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3), blocks = block_count(n);
  at::Tensor grad = at::empty_like(y, at::MemoryFormat::Contiguous);
  at::Tensor energy = at::zeros({B, blocks}, y.options());
  const DeviceGrid<double> g = device_grid<double>(args, y);
  const PairTable<double> pairs = pair_table<double>(args);
  double *grad_data = grad.data_ptr<double>(), *energy_data = energy.data_ptr<double>();
  dispatch_solver(args.relaxation, kind, K, [&](auto r, auto u, auto kmax) {
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        energy_data[j] = run_block(j / blocks, j % blocks, n, [&](int64_t b, int64_t i) {
          double pixel_energy = 0;
          double* out = grad_data + b * K * n + i;
          solver_gradient_pixel<decltype(r)::value, decltype(u)::value, decltype(kmax)::value, double>(
              g, g.stored(), pairs, operand.data_ptr<double>(), unlabeled.data_ptr<bool>(), seeded.data_ptr<bool>(),
              eta, lam, unary_eps, b, i, [&](int64_t k, double gk) { out[k * n] = gk; }, pixel_energy);
          return pixel_energy;
        });
      }
    });
  });
  return {energy.sum(1), grad};
}

// solver.cu's adaptive_step_kernel: adaptive_pixel for every pixel of the images still running, the constants
// from the image's step number and lr scale.
void adaptive_step_emulated(const at::Tensor& theta, const at::Tensor& m, const at::Tensor& v, const at::Tensor& y,
                            const at::Tensor& grad, const at::Tensor& steps, const at::Tensor& scale,
                            const at::Tensor& seeds, const at::Tensor& seeded, at::ArrayRef<double> rule) {
  check_adaptive_step_args(theta, m, v, y, grad, steps, scale, seeds, seeded, rule);
  check_double(y, "y");
  const AdaptiveRule r(rule);
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3);
  double *pt = theta.data_ptr<double>(), *pm = m.data_ptr<double>(), *pv = v.data_ptr<double>();
  double* py = y.data_ptr<double>();
  const double* pg = grad.data_ptr<double>();
  at::parallel_for(0, B * n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t b = j / n, base = b * K * n + j % n;
      const double lr_scale = scale.data_ptr<double>()[b];
      if (!(lr_scale > 0)) continue;
      adaptive_pixel<double>(
          K, seeded.data_ptr<bool>()[j], seeds.data_ptr<int64_t>()[j],
          r.constants<double>(steps.data_ptr<int64_t>()[b], lr_scale),
          [&](int64_t k, double& t, double& yk, double& gk, double& mk, double& vk) {
            const int64_t at = base + k * n;
            t = pt[at], yk = py[at], gk = pg[at], mk = pm[at], vk = pv[at];
          },
          [&](int64_t k, double t, double mk, double vk, double yk) {
            const int64_t at = base + k * n;
            pt[at] = t, pm[at] = mk, pv[at] = vk, py[at] = yk;
          });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops_emulated, CPU, m) {
  m.impl("grid_potts_energy", &grid_potts_energy_emulated);
  m.impl("grid_potts_energy_backward", &grid_potts_energy_backward_emulated);
  m.impl("grid_affinity", &grid_affinity_emulated);
  m.impl("unary_loss", &unary_loss_emulated);
  m.impl("unary_loss_backward", &unary_loss_backward_emulated);
  m.impl("grid_solver_gradient", &grid_solver_gradient_emulated);
  m.impl("adaptive_step", &adaptive_step_emulated);
}

}  // namespace pottsops
