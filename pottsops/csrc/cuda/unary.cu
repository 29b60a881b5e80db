// Fused softmax + unary H(y, softmax(z)) on CUDA, forward and backward: one thread per pixel, threads
// of a block along w.  Each pass over the K channels of a pixel reads z (and y) from L1 after the
// first; DRAM sees each input once and each output once.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/unary_device.cuh"
#include "cuda/launch.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/unaries.h"
#include "pottsops/unary_args.h"

namespace pottsops {
namespace {

template <int U, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    unary_forward_kernel(const DeviceUnary<scalar_t> u, const View4<scalar_t> loss) {
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < u.H * u.W) unary_forward_pixel<U, scalar_t>(u, loss, b, i);
}

template <int U, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    unary_backward_kernel(const DeviceUnary<scalar_t> u, const View4<const scalar_t> grad_loss,
                          const View4<scalar_t> grad_z, const View4<scalar_t> grad_y) {
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < u.H * u.W) unary_backward_pixel<U, scalar_t>(u, grad_loss, grad_z, grad_y, b, i);
}

at::Tensor unary_loss_cuda(const at::Tensor& logits, const at::Tensor& y, const c10::optional<at::Tensor>& mask,
                           int64_t kind, double eps) {
  const UnaryArgs args = make_unary_args(logits, y, mask, kind, eps);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), H = logits.size(2), W = logits.size(3);
  at::Tensor loss = at::empty({B, H, W}, logits.options());
  if (loss.numel() == 0) return loss;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unary_loss_cuda", [&] {
    const DeviceUnary<scalar_t> u = device_unary<scalar_t>(args);
    POTTS_DISPATCH_UNARY(args.kind, [&] {
      unary_forward_kernel<U, scalar_t>
          <<<pixel_grid(B, H, W, "logits"), kThreads, 0, stream>>>(u, pixel_view<scalar_t>(loss));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> unary_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                            const at::Tensor& y,
                                                            const c10::optional<at::Tensor>& mask, int64_t kind,
                                                            double eps) {
  const UnaryArgs args = make_unary_args(logits, y, mask, kind, eps);
  check_unary_grad(grad_loss, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor go = grad_loss.to(logits.scalar_type());
  at::Tensor grad_z = at::empty_like(logits), grad_y = at::empty_like(y);
  const int64_t B = logits.size(0), H = logits.size(2), W = logits.size(3);
  if (B * H * W == 0) return {grad_z, grad_y};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unary_loss_backward_cuda", [&] {
    const DeviceUnary<scalar_t> u = device_unary<scalar_t>(args);
    const View4<const scalar_t> g = const_pixel_view<scalar_t>(go);
    POTTS_DISPATCH_UNARY(args.kind, [&] {
      unary_backward_kernel<U, scalar_t><<<pixel_grid(B, H, W, "logits"), kThreads, 0, stream>>>(
          u, g, view4<scalar_t>(grad_z), view4<scalar_t>(grad_y));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_z, grad_y};
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) {
  m.impl("unary_loss", &unary_loss_cuda);
  m.impl("unary_loss_backward", &unary_loss_backward_cuda);
}

}  // namespace pottsops
