// The CUDA grid, unary and solver kernels' device code (cuda/grid_device.cuh, unary_device.cuh,
// solver_device.cuh) compiled
// for the host and run in the kernels' launch shape: per image, blocks of kThreads pixels one after
// another, a block's energy summed over its threads, then the blocks' partials summed in order; the
// one-launch step's control runs after an image's last block, as on the device.  CI has no GPU, so this
// is how the code every CUDA kernel runs per pixel gets tested there (tests/test_device_emulation.py:
// against the reference ops and the CPU loop).  Not tested this way: what nvcc makes of it, the cub
// reductions' order, the last-block hand-off and memory ordering of mirror_fused_step.
//
// Registered as pottsops_emulated::<op> (CPU, float64 only) with the implementations of grid_potts.cu,
// unary.cu and solver.cu; tests give them the schemas of the pottsops ops of the same names.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cuda/grid_device.cuh"
#include "cuda/solver_device.cuh"
#include "cuda/unary_device.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/device_code.h"
#include "pottsops/solver_args.h"
#include "pottsops/unary_args.h"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> grid_solver_gradient_emulated(
    const at::Tensor& y, const c10::optional<at::Tensor>& image, const c10::optional<at::Tensor>& weights,
    const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
    at::ArrayRef<double> spatial, int64_t relaxation, double eps, const at::Tensor& operand,
    const at::Tensor& unlabeled, const at::Tensor& seeded, int64_t kind, double eta, double lam, double unary_eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_grid_solver_args(y, operand, unlabeled, seeded);
  check_double(y, "y");
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3), blocks = block_count(n);
  at::Tensor grad = at::empty_like(y, at::MemoryFormat::Contiguous);
  at::Tensor energy = at::zeros({B, blocks}, y.options()), spread = at::zeros({B, blocks}, y.options());
  const DeviceGrid<double> g = device_grid<double>(args, y);
  const PairTable<double> pairs = pair_table<double>(args);
  double *grad_data = grad.data_ptr<double>(), *energy_data = energy.data_ptr<double>();
  double* spread_data = spread.data_ptr<double>();
  dispatch_solver(args.relaxation, kind, K, [&](auto r, auto u, auto kmax) {
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        double widest = 0;
        energy_data[j] = run_block(j / blocks, j % blocks, n, [&](int64_t b, int64_t i) {
          double pixel_energy = 0, pixel_spread = 0;
          double* out = grad_data + b * K * n + i;
          solver_gradient_pixel<decltype(r)::value, decltype(u)::value, decltype(kmax)::value, double>(
              g, g.stored(), pairs, operand.data_ptr<double>(), unlabeled.data_ptr<bool>(), seeded.data_ptr<bool>(),
              eta, lam, unary_eps, b, i, [&](int64_t k, double gk) { out[k * n] = gk; }, pixel_energy,
              pixel_spread);
          widest = pixel_spread > widest ? pixel_spread : widest;
          return pixel_energy;
        });
        spread_data[j] = widest;
      }
    });
  });
  return {energy.sum(1), grad, std::get<0>(spread.max(1))};
}

void mirror_fused_step_emulated(const at::Tensor& log_buffers, const at::Tensor& grad_buffers, const at::Tensor& state,
                                const at::Tensor& arrived, const at::Tensor& trace_row,
                                const c10::optional<at::Tensor>& image, const c10::optional<at::Tensor>& weights,
                                const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& inv_two_sigma2,
                                at::IntArrayRef offsets, at::ArrayRef<double> spatial, int64_t relaxation, double eps,
                                const at::Tensor& operand, const at::Tensor& unlabeled, const at::Tensor& seeded,
                                const at::Tensor& seeds, int64_t kind, double eta, double lam, double unary_eps,
                                double log_floor, double tol) {
  check_fused_step_args(log_buffers, grad_buffers, state, arrived, trace_row, operand, unlabeled, seeded, seeds);
  const at::Tensor log_y = log_buffers[0];
  check_double(log_y, "log_buffers");
  const GridArgs args = make_grid_args(log_y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  const int64_t B = log_y.size(0), K = log_y.size(1), n = log_y.size(2) * log_y.size(3), size = B * K * n;
  const int64_t blocks = block_count(n);
  const DeviceGrid<double> g = device_grid<double>(args, log_y);
  const PairTable<double> pairs = pair_table<double>(args);
  double *logs = log_buffers.data_ptr<double>(), *grads = grad_buffers.data_ptr<double>();
  double *state_data = state.data_ptr<double>(), *trace = trace_row.data_ptr<double>();
  dispatch_solver(args.relaxation, kind, K, [&](auto r, auto u, auto kmax) {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {  // an image's blocks, then its control
      for (int64_t b = begin; b < end; ++b) {
        double* own = state_data + b * kStateColumns;
        if (own[kActive] == 0) {
          trace[b] = own[kEnergy];
          continue;
        }
        const MirroredLabels<double> labels = trial_labels<double>(g, own, logs, grads, size, seeds.data_ptr<int64_t>(),
                                                                   seeded.data_ptr<bool>(), log_floor);
        const int64_t other = (own[kCurrent] != 0 ? 0 : 1) * size + b * K * n;
        double total = 0, widest = 0;
        for (int64_t block = 0; block < blocks; ++block) {
          double block_widest = 0;
          total += run_block(b, block, n, [&](int64_t, int64_t i) {
            double pixel_energy = 0, pixel_spread = 0;
            mirror_fused_pixel<decltype(r)::value, decltype(u)::value, decltype(kmax)::value, double>(
                g, labels, pairs, operand.data_ptr<double>(), unlabeled.data_ptr<bool>(), seeded.data_ptr<bool>(),
                eta, lam, unary_eps, b, i, logs + other + i, grads + other + i, pixel_energy, pixel_spread);
            block_widest = pixel_spread > block_widest ? pixel_spread : block_widest;
            return pixel_energy;
          });
          widest = block_widest > widest ? block_widest : widest;
        }
        trace[b] = mirror_control<double>(own, total, widest, tol);
      }
    });
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
  m.impl("mirror_fused_step", &mirror_fused_step_emulated);
}

}  // namespace pottsops
