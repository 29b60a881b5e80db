// The fused solver step on CUDA: one thread per pixel; per-image sums and maxima reduced per block in a
// fixed order (cub::BlockReduce) and then over blocks (deterministic, no atomics).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "pottsops/cuda_launch.cuh"
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

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) {
  m.impl("solver_gradient", &solver_gradient_cuda);
  m.impl("mirror_step", &mirror_step_cuda);
}

}  // namespace pottsops
