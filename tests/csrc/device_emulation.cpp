// The CUDA grid, unary and solver kernels' device code (cuda/grid_device.cuh, unary_device.cuh and the
// step rule's adaptive_pixel in pottsops/solver_math.h) compiled for the host and run in the kernels'
// launch shape: per image, blocks of kThreads pixels one after another, a block's energy summed over its
// threads, then the blocks' partials summed in order.  CI has no GPU, so this is how the code every CUDA
// kernel runs per pixel gets tested there (tests/test_device_emulation.py: against the reference ops and
// the CPU loop).  Not tested this way: what nvcc makes of it and the cub reductions' order.
//
// Registered as pottsops_emulated::<op> (CPU, float32 and float64, in the types the CUDA launchers use) with
// the implementations of grid_potts.cu, unary.cu and solver.cu; tests give them the schemas of the pottsops ops
// of the same names.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <memory>
#include <vector>

#include "cuda/grid_device.cuh"
#include "cuda/unary_device.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/device_code.h"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"
#include "pottsops/table_cache.h"
#include "pottsops/unary_args.h"
#include "pottsops/unaries.h"

namespace pottsops {
namespace {

void check_emulated(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat, name,
              ": the emulated device code runs float32 and float64, got ", t.scalar_type());
}

// Runs thread(b, i) for the pixels i of block `block` of image b and sums its results in total_t (a block's
// reduction, in the order of its threads rather than cub's tree).
template <typename total_t, typename Thread>
total_t run_block(int64_t b, int64_t block, int64_t n, Thread&& thread) {
  total_t total = 0;
  for (int64_t i = block * kThreads; i < (block + 1) * kThreads && i < n; ++i) total += thread(b, i);
  return total;
}

// The emulated launches take their pair tables through a TableCache as the CUDA launchers do (on CPU
// tensors, never capturing); a small one, so that the tests' many tables also exercise its dropping.
template <typename acc_t>
CachedPairTable<acc_t> emulated_pair_table(const GridArgs& args) {
  static TableCache cache(4);
  return cached_pair_table<acc_t>(cache, args, at::Device(at::kCPU), false);
}

// pottsops_table_cache::*: a TableCache of its own for tests of its rules (what it keeps, drops, refuses).
std::unique_ptr<TableCache>& probed_cache() {
  static std::unique_ptr<TableCache> cache;
  return cache;
}

void table_cache_reset(int64_t capacity) { probed_cache() = std::make_unique<TableCache>(capacity); }

at::Tensor table_cache_get(const at::Tensor& bytes, bool capturing) {
  const at::Tensor host = bytes.to(at::kByte).contiguous();
  const std::vector<uint8_t> data(host.data_ptr<uint8_t>(), host.data_ptr<uint8_t>() + host.numel());
  const at::Tensor copy = probed_cache()->get(data, at::Device(at::kCPU), capturing, "table");
  return copy.defined() ? copy : at::empty({0}, at::kByte);
}

int64_t table_cache_size() { return static_cast<int64_t>(probed_cache()->size()); }

int64_t block_count(int64_t n) { return (n + kThreads - 1) / kThreads; }

at::Tensor grid_potts_energy_emulated(const at::Tensor& y, const c10::optional<at::Tensor>& image,
                                      const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
                                      const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
                                      at::ArrayRef<double> spatial, int64_t relaxation, double eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_emulated(y, "y");
  const int64_t B = y.size(0), n = y.size(2) * y.size(3), blocks = block_count(n);
  at::Tensor partial = at::zeros({B, blocks}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "grid_potts_energy_emulated", [&] {
    const DeviceGrid<scalar_t> g = device_grid<scalar_t>(args, y);
    const CachedPairTable<scalar_t> table = emulated_pair_table<scalar_t>(args);
    const PairTable<scalar_t>& pairs = table.view;
    scalar_t* out = partial.data_ptr<scalar_t>();
    POTTS_DISPATCH_RELAXATION(args.relaxation, [&] {
      at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j)
          out[j] = run_block<scalar_t>(j / blocks, j % blocks, n,
                                       [&](int64_t b, int64_t i) { return energy_pixel<R, scalar_t>(g, pairs, b, i); });
      });
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
  check_emulated(y, "y");
  const at::Tensor go = grad_energy.to(y.scalar_type()).contiguous();
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_w = weights_grad_buffer(args, weights_grad);
  const int64_t B = y.size(0), n = y.size(2) * y.size(3);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "grid_potts_energy_backward_emulated", [&] {
    const DeviceGrid<scalar_t> g = device_grid<scalar_t>(args, y);
    const CachedPairTable<scalar_t> table = emulated_pair_table<scalar_t>(args);
    const PairTable<scalar_t>& pairs = table.view;
    const View4<scalar_t> out = view4<scalar_t>(grad_y);
    scalar_t* gw = weights_grad ? grad_w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* go_data = go.data_ptr<scalar_t>();
    POTTS_DISPATCH_RELAXATION(args.relaxation, [&] {
      dispatch_kmax(y.size(1), [&](auto kmax) {
        at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
          for (int64_t j = begin; j < end; ++j)
            backward_pixel<R, decltype(kmax)::value, scalar_t>(g, pairs, go_data[j / n], out, gw, j / n, j % n);
        });
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
  check_emulated(args.image, "image");
  const int64_t B = image.size(0), n = image.size(2) * image.size(3);
  at::Tensor out = at::empty({B, args.num_offsets(), image.size(2), image.size(3)}, args.image.options());
  AT_DISPATCH_FLOATING_TYPES(args.image.scalar_type(), "grid_affinity_emulated", [&] {
    const DeviceGrid<scalar_t> g = device_grid<scalar_t>(args, image);
    const CachedPairTable<scalar_t> table = emulated_pair_table<scalar_t>(args);
    const PairTable<scalar_t>& pairs = table.view;
    const View4<scalar_t> view = view4<scalar_t>(out);
    at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) affinity_pixel<scalar_t>(g, pairs, view, j / n, j % n);
    });
  });
  return out;
}

at::Tensor unary_loss_emulated(const at::Tensor& logits, const at::Tensor& y, const c10::optional<at::Tensor>& mask,
                               int64_t kind, double eps) {
  const UnaryArgs args = make_unary_args(logits, y, mask, kind, eps);
  check_emulated(logits, "logits");
  const int64_t B = logits.size(0), n = logits.size(2) * logits.size(3);
  at::Tensor loss = at::empty({B, logits.size(2), logits.size(3)}, logits.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "unary_loss_emulated", [&] {
    const DeviceUnary<scalar_t> u = device_unary<scalar_t>(args);
    const View4<scalar_t> out = pixel_view<scalar_t>(loss);
    POTTS_DISPATCH_UNARY(args.kind, [&] {
      at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) unary_forward_pixel<U, scalar_t>(u, out, j / n, j % n);
      });
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
  check_emulated(logits, "logits");
  const at::Tensor go = grad_loss.to(logits.scalar_type());
  at::Tensor grad_z = at::empty_like(logits), grad_y = at::empty_like(y);
  const int64_t B = logits.size(0), n = logits.size(2) * logits.size(3);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "unary_loss_backward_emulated", [&] {
    const DeviceUnary<scalar_t> u = device_unary<scalar_t>(args);
    const View4<const scalar_t> g = const_pixel_view<scalar_t>(go);
    const View4<scalar_t> gz = view4<scalar_t>(grad_z), gy = view4<scalar_t>(grad_y);
    POTTS_DISPATCH_UNARY(args.kind, [&] {
      at::parallel_for(0, B * n, kThreads, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) unary_backward_pixel<U, scalar_t>(u, g, gz, gy, j / n, j % n);
      });
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
  check_emulated(y, "y");
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3), blocks = block_count(n);
  at::Tensor grad = at::empty_like(y, at::MemoryFormat::Contiguous);
  at::Tensor energy = at::zeros({B, blocks}, y.options().dtype(at::kDouble));  // as grid_solver.cu: double
  double* energy_data = energy.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "grid_solver_gradient_emulated", [&] {
    const DeviceGrid<scalar_t> g = device_grid<scalar_t>(args, y);
    const CachedPairTable<scalar_t> table = emulated_pair_table<scalar_t>(args);
    const PairTable<scalar_t>& pairs = table.view;
    scalar_t* grad_data = grad.data_ptr<scalar_t>();
    dispatch_solver(args.relaxation, kind, K, [&](auto r, auto u, auto kmax) {
      at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          energy_data[j] = run_block<double>(j / blocks, j % blocks, n, [&](int64_t b, int64_t i) {
            scalar_t pixel_energy = 0;
            scalar_t* out = grad_data + b * K * n + i;
            solver_gradient_pixel<decltype(r)::value, decltype(u)::value, decltype(kmax)::value, scalar_t>(
                g, g.stored(), pairs, operand.data_ptr<scalar_t>(), unlabeled.data_ptr<bool>(),
                seeded.data_ptr<bool>(), static_cast<scalar_t>(eta), static_cast<scalar_t>(lam),
                static_cast<scalar_t>(unary_eps), b, i, [&](int64_t k, scalar_t gk) { out[k * n] = gk; },
                pixel_energy);
            return static_cast<double>(pixel_energy);
          });
        }
      });
    });
  });
  return {energy.sum(1).to(y.scalar_type()), grad};
}

// solver.cu's adaptive_step_kernel: adaptive_pixel for every pixel of the images still running, the constants
// from the image's step number and lr scale.
void adaptive_step_emulated(const at::Tensor& theta, const at::Tensor& m, const at::Tensor& v, const at::Tensor& y,
                            const at::Tensor& grad, const at::Tensor& steps, const at::Tensor& scale,
                            const at::Tensor& seeds, const at::Tensor& seeded, at::ArrayRef<double> rule) {
  check_adaptive_step_args(theta, m, v, y, grad, steps, scale, seeds, seeded, rule);
  check_emulated(y, "y");
  const AdaptiveRule r(rule);
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "adaptive_step_emulated", [&] {
    scalar_t *pt = theta.data_ptr<scalar_t>(), *pm = m.data_ptr<scalar_t>(), *pv = v.data_ptr<scalar_t>();
    scalar_t* py = y.data_ptr<scalar_t>();
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    at::parallel_for(0, B * n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t b = j / n;
        const double lr_scale = scale.data_ptr<double>()[b];
        if (!(lr_scale > 0)) continue;
        adaptive_pixel_strided<scalar_t>(K, n, b * K * n + j % n, seeded.data_ptr<bool>()[j],
                                         seeds.data_ptr<int64_t>()[j],
                                         r.constants<scalar_t>(steps.data_ptr<int64_t>()[b], lr_scale), pt, pm, pv,
                                         py, pg);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY(pottsops_table_cache, m) {
  m.def("reset(int capacity) -> ()", &table_cache_reset);
  m.def("get(Tensor bytes, bool capturing) -> Tensor", &table_cache_get);
  m.def("size() -> int", &table_cache_size);
  m.def("largest_grid_kernel_parameters() -> int", [] { return static_cast<int64_t>(kLargestGridKernelParameters); });
}

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
