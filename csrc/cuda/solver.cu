// The fused solver step on CUDA: one thread per pixel; per-image sums and maxima reduced per block in a
// fixed order (cub::BlockReduce) and then over blocks in a fixed order (deterministic; the only atomic is
// the counter that finds the last block of an image, which does not change any value).
//
// mirror_step and solver_gradient are the two-kernel step; mirror_fused_step is the one-launch step:
// the mirror step, the gradient at the stepped labels and each image's step control in one kernel.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "cuda/grid_device.cuh"
#include "cuda/solver_device.cuh"
#include "pottsops/cuda_launch.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"

namespace pottsops {
namespace {

template <int U, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    solver_gradient_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ operand,
                           const scalar_t* __restrict__ potts_grad, const bool* __restrict__ unlabeled,
                           const bool* __restrict__ seeded, int64_t K, int64_t n, scalar_t eta, scalar_t lam,
                           scalar_t eps, scalar_t* __restrict__ grad, double* __restrict__ value_partial,
                           double* __restrict__ spread_partial) {
  const int64_t b = blockIdx.y;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  SolverPixelOut r{0.0, 0.0};
  if (pixel < n) {
    const int64_t base = b * K * n + pixel;
    r = solver_pixel<U, scalar_t>(
        K, unlabeled[b * n + pixel], seeded[b * n + pixel], eta, lam, eps,
        [&](int64_t k, scalar_t& yk, scalar_t& ok, scalar_t& gk) {
          yk = y[base + k * n];
          ok = operand[base + k * n];
          gk = potts_grad[base + k * n];
        },
        [&](int64_t k, scalar_t g) { grad[base + k * n] = g; });
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const double total = Reduce(storage).Sum(r.value);
  __syncthreads();
  const double widest = Reduce(storage).Reduce(r.spread, [](double a, double c) { return a > c ? a : c; });
  if (threadIdx.x == 0) {
    value_partial[b * gridDim.x + blockIdx.x] = total;
    spread_partial[b * gridDim.x + blockIdx.x] = widest;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    mirror_step_kernel(const scalar_t* __restrict__ log_y, const scalar_t* __restrict__ grad,
                       const double* __restrict__ scale, const int64_t* __restrict__ seeds,
                       const bool* __restrict__ seeded, int64_t K, int64_t n, scalar_t log_floor,
                       scalar_t* __restrict__ new_log, scalar_t* __restrict__ new_y) {
  const int64_t b = blockIdx.y;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= n) return;
  const int64_t base = b * K * n + pixel;
  mirror_pixel<scalar_t>(
      K, seeded[b * n + pixel], seeds[b * n + pixel], static_cast<scalar_t>(scale[b]), log_floor,
      [&](int64_t k, scalar_t& l, scalar_t& g) {
        l = log_y[base + k * n];
        g = grad[base + k * n];
      },
      [&](int64_t k, scalar_t l, scalar_t v) {
        new_log[base + k * n] = l;
        new_y[base + k * n] = v;
      });
}

// One step of pottsops/solve.py's mirror descent for every active image, in one launch: each pixel's
// trial log y (into the other buffer) and the gradient there (solver_gradient_pixel over MirroredLabels),
// the trial's energy and spread reduced per block; the last block of an image to finish (a counter per
// image, reset by that block) sums the partials in a fixed order and runs _MirrorState._control: accept
// (swap buffers) or reject, tau, steps, active.  trace_row[b] gets the image's energy after the step.
template <int R, int U, int KMAX, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    mirror_fused_kernel(const DeviceGrid<scalar_t> g, const PairTable<scalar_t> pairs,
                        scalar_t* __restrict__ log_buffers, scalar_t* __restrict__ grad_buffers,
                        double* __restrict__ state, unsigned int* __restrict__ arrived,
                        double* __restrict__ energy_partial, double* __restrict__ spread_partial,
                        const scalar_t* __restrict__ operand, const bool* __restrict__ unlabeled,
                        const bool* __restrict__ seeded, const int64_t* __restrict__ seeds, scalar_t eta,
                        scalar_t lam, scalar_t unary_eps, scalar_t log_floor, scalar_t tol,
                        scalar_t* __restrict__ trace_row) {
  const int64_t b = blockIdx.y, n = g.H * g.W, size = static_cast<int64_t>(gridDim.y) * g.K * n;
  double* own = state + b * kStateColumns;
  if (own[kActive] == 0) {  // a stopped image keeps its iterate
    if (blockIdx.x == 0 && threadIdx.x == 0) trace_row[b] = static_cast<scalar_t>(own[kEnergy]);
    return;
  }
  const MirroredLabels<scalar_t> labels =
      trial_labels<scalar_t>(g, own, log_buffers, grad_buffers, size, seeds, seeded, log_floor);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  scalar_t energy = 0, spread = 0;
  if (i < n) {
    const int64_t other = (own[kCurrent] != 0 ? 0 : 1) * size + b * g.K * n + i;
    mirror_fused_pixel<R, U, KMAX, scalar_t>(g, labels, pairs, operand, unlabeled, seeded, eta, lam, unary_eps, b, i,
                                             log_buffers + other, grad_buffers + other, energy, spread);
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ bool last;
  const auto widest_of = [](double x, double y) { return x > y ? x : y; };
  double total = Reduce(storage).Sum(static_cast<double>(energy));
  __syncthreads();
  double widest = Reduce(storage).Reduce(static_cast<double>(spread), widest_of);
  if (threadIdx.x == 0) {
    energy_partial[b * gridDim.x + blockIdx.x] = total;
    spread_partial[b * gridDim.x + blockIdx.x] = widest;
    __threadfence();  // the partials are visible before the count says so
    last = atomicAdd(arrived + b, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  total = 0;
  widest = 0;
  for (int64_t j = threadIdx.x; j < gridDim.x; j += kThreads) {  // a fixed order: deterministic
    total += __ldcg(energy_partial + b * gridDim.x + j);
    widest = widest_of(widest, __ldcg(spread_partial + b * gridDim.x + j));
  }
  __syncthreads();
  total = Reduce(storage).Sum(total);
  __syncthreads();
  widest = Reduce(storage).Reduce(widest, widest_of);
  if (threadIdx.x != 0) return;
  trace_row[b] = mirror_control<scalar_t>(own, total, widest, tol);
  arrived[b] = 0;  // ready for the next launch
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> solver_gradient_cuda(const at::Tensor& y, const at::Tensor& operand,
                                                                    const at::Tensor& potts_grad,
                                                                    const at::Tensor& unlabeled,
                                                                    const at::Tensor& seeded, int64_t kind,
                                                                    double eta, double lam, double eps) {
  check_solver_tensors({{"y", &y}, {"operand", &operand}, {"potts_grad", &potts_grad}},
                       {{"unlabeled", &unlabeled}, {"seeded", &seeded}});
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3);
  at::Tensor grad = at::empty_like(y);
  if (B * n == 0) return {at::zeros({B}, y.options()), grad, at::zeros({B}, y.options())};
  const dim3 grid = pixel_grid(B, 1, n, "y");
  at::Tensor value = at::empty({B, static_cast<int64_t>(grid.x)}, y.options().dtype(at::kDouble));
  at::Tensor spread = at::empty_like(value);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "solver_gradient_cuda", [&] {
    POTTS_DISPATCH_UNARY(kind, [&] {
      solver_gradient_kernel<U, scalar_t><<<grid, kThreads, 0, stream>>>(
          y.data_ptr<scalar_t>(), operand.data_ptr<scalar_t>(), potts_grad.data_ptr<scalar_t>(),
          unlabeled.data_ptr<bool>(), seeded.data_ptr<bool>(), K, n, static_cast<scalar_t>(eta),
          static_cast<scalar_t>(lam), static_cast<scalar_t>(eps), grad.data_ptr<scalar_t>(),
          value.data_ptr<double>(), spread.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {value.sum(1).to(y.scalar_type()), grad, std::get<0>(spread.max(1)).to(y.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> mirror_step_cuda(const at::Tensor& log_y, const at::Tensor& grad,
                                                    const at::Tensor& scale, const at::Tensor& seeds,
                                                    const at::Tensor& seeded, double log_floor) {
  check_solver_tensors({{"log_y", &log_y}, {"grad", &grad}}, {{"seeds", &seeds}, {"seeded", &seeded}});
  check_mirror_args(log_y, scale, seeds);
  const c10::cuda::CUDAGuard guard(log_y.device());
  const int64_t B = log_y.size(0), K = log_y.size(1), n = log_y.size(2) * log_y.size(3);
  at::Tensor new_log = at::empty_like(log_y), new_y = at::empty_like(log_y);
  if (B * n == 0) return {new_log, new_y};
  const at::Tensor scales = scale.to(at::kDouble).contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(log_y.scalar_type(), "mirror_step_cuda", [&] {
    mirror_step_kernel<scalar_t><<<pixel_grid(B, 1, n, "log_y"), kThreads, 0, stream>>>(
        log_y.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), scales.data_ptr<double>(), seeds.data_ptr<int64_t>(),
        seeded.data_ptr<bool>(), K, n, static_cast<scalar_t>(log_floor), new_log.data_ptr<scalar_t>(),
        new_y.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {new_log, new_y};
}

void mirror_fused_step_cuda(const at::Tensor& log_buffers, const at::Tensor& grad_buffers, const at::Tensor& state,
                            const at::Tensor& arrived, const at::Tensor& trace_row,
                            const c10::optional<at::Tensor>& image, const c10::optional<at::Tensor>& weights,
                            const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& inv_two_sigma2,
                            at::IntArrayRef offsets, at::ArrayRef<double> spatial, int64_t relaxation, double eps,
                            const at::Tensor& operand, const at::Tensor& unlabeled, const at::Tensor& seeded,
                            const at::Tensor& seeds, int64_t kind, double eta, double lam, double unary_eps,
                            double log_floor, double tol) {
  check_fused_step_args(log_buffers, grad_buffers, state, arrived, trace_row, operand, unlabeled, seeded, seeds);
  const at::Tensor log_y = log_buffers[0];
  const int64_t B = log_y.size(0), H = log_y.size(2), W = log_y.size(3);
  const GridArgs args = make_grid_args(log_y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  const c10::cuda::CUDAGuard guard(log_y.device());
  if (B == 0 || H * W == 0) return;
  const dim3 grid = pixel_grid(B, H, W, "log_buffers");
  at::Tensor energy = at::empty({B, static_cast<int64_t>(grid.x)}, state.options());
  at::Tensor spread = at::empty_like(energy);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(log_y.scalar_type(), "mirror_fused_step_cuda", [&] {
    using T = scalar_t;
    const DeviceGrid<T> g = device_grid<T>(args, log_y);
    const PairTable<T> pairs = pair_table<T>(args);
    dispatch_solver(args.relaxation, kind, log_y.size(1), [&](auto r, auto u, auto kmax) {
      mirror_fused_kernel<decltype(r)::value, decltype(u)::value, decltype(kmax)::value, T>
          <<<grid, kThreads, 0, stream>>>(g, pairs, log_buffers.data_ptr<T>(), grad_buffers.data_ptr<T>(),
                                          state.data_ptr<double>(),
                                          reinterpret_cast<unsigned int*>(arrived.data_ptr<int32_t>()),
                                          energy.data_ptr<double>(), spread.data_ptr<double>(), operand.data_ptr<T>(),
                                          unlabeled.data_ptr<bool>(), seeded.data_ptr<bool>(),
                                          seeds.data_ptr<int64_t>(), static_cast<T>(eta), static_cast<T>(lam),
                                          static_cast<T>(unary_eps), static_cast<T>(log_floor), static_cast<T>(tol),
                                          trace_row.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) {
  m.impl("solver_gradient", &solver_gradient_cuda);
  m.impl("mirror_step", &mirror_step_cuda);
  m.impl("mirror_fused_step", &mirror_fused_step_cuda);
}

}  // namespace pottsops
