// The solver's step on CUDA (adaptive_step; pottsops/solver/loop.py replays it with grid_solver_gradient from CUDA
// graphs): one thread per pixel runs adaptive_pixel_strided (pottsops/solver_math.h), the per-pixel form of the
// rule the CPU loop runs over rows.  No reductions: every value is written by the thread of its pixel.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launch.cuh"
#include "pottsops/device_code.h"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"

namespace pottsops {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    adaptive_step_kernel(scalar_t* __restrict__ theta, scalar_t* __restrict__ m, scalar_t* __restrict__ v,
                         scalar_t* __restrict__ y, const scalar_t* __restrict__ grad,
                         const int64_t* __restrict__ steps, const double* __restrict__ scale,
                         const int64_t* __restrict__ seeds, const bool* __restrict__ seeded, int64_t K, int64_t n,
                         double lr, double beta1, double beta2, double eps, double log_floor) {
  const int64_t b = blockIdx.y;
  if (!(scale[b] > 0)) return;  // a stopped image keeps its iterate
  __shared__ AdaptiveStep<scalar_t> constants;
  if (threadIdx.x == 0)
    constants = adaptive_step_constants<scalar_t>(static_cast<double>(steps[b]), lr * scale[b], beta1, beta2, eps,
                                                  log_floor);
  __syncthreads();
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= n) return;
  adaptive_pixel_strided<scalar_t>(K, n, b * K * n + pixel, seeded[b * n + pixel], seeds[b * n + pixel], constants,
                                   theta, m, v, y, grad);
}

void adaptive_step_cuda(const at::Tensor& theta, const at::Tensor& m, const at::Tensor& v, const at::Tensor& y,
                        const at::Tensor& grad, const at::Tensor& steps, const at::Tensor& scale,
                        const at::Tensor& seeds, const at::Tensor& seeded, at::ArrayRef<double> rule) {
  check_adaptive_step_args(theta, m, v, y, grad, steps, scale, seeds, seeded, rule);
  const c10::cuda::CUDAGuard guard(y.device());  // first: the capture status below is the tensors' device's
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
    check_seed_ids(seeds, seeded, y.size(1));
  }
  const AdaptiveRule r(rule);
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3);
  if (B * n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "adaptive_step_cuda", [&] {
    adaptive_step_kernel<scalar_t><<<pixel_grid(B, 1, n, "y"), kThreads, 0, stream>>>(
        theta.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
        grad.data_ptr<scalar_t>(), steps.data_ptr<int64_t>(), scale.data_ptr<double>(), seeds.data_ptr<int64_t>(),
        seeded.data_ptr<bool>(), K, n, r.lr, r.beta1, r.beta2, r.eps, r.log_floor);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) { m.impl("adaptive_step", &adaptive_step_cuda); }

}  // namespace pottsops
