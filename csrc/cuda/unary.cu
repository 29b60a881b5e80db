// Fused softmax + unary H(y, softmax(z)) on CUDA, forward and backward: one thread per pixel, threads
// of a block along w.  Each pass over the K channels of a pixel reads z (and y) from L1 after the
// first; DRAM sees each input once and each output once.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "pottsops/cuda_launch.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/unary_args.h"

namespace pottsops {
namespace {

template <typename scalar_t>
struct DeviceUnary {
  using acc_t = at::opmath_type<scalar_t>;
  View4<const scalar_t> z, y;
  View4<const bool> mask;
  int64_t K, H, W;
  acc_t eps;

  // Missing pixels read as z = 0, y = 1/K, so that whatever they hold never reaches a result.
  __device__ acc_t logit(bool present, int64_t b, int64_t k, int64_t h, int64_t w) const {
    return present ? static_cast<acc_t>(z(b, k, h, w)) : acc_t(0);
  }
  __device__ acc_t label(bool present, int64_t b, int64_t k, int64_t h, int64_t w) const {
    return present ? static_cast<acc_t>(y(b, k, h, w)) : acc_t(1) / static_cast<acc_t>(K);
  }

  // Per-pixel reductions: log-sum-exp of z, the unary's dot product, sum of y, and H.
  struct Pixel {
    acc_t max, inv_total, lse, dot, sum_y, value;
  };

  template <int U>
  __device__ Pixel reduce(bool present, int64_t b, int64_t h, int64_t w) const {
    Pixel p;
    p.max = -INFINITY;
    for (int64_t k = 0; k < K; ++k) p.max = potts_max(p.max, logit(present, b, k, h, w));
    acc_t total = 0;
    for (int64_t k = 0; k < K; ++k) total += potts_exp(logit(present, b, k, h, w) - p.max);
    p.inv_total = acc_t(1) / total;
    p.lse = p.max + potts_log(total);
    p.dot = 0;
    p.sum_y = 0;
    for (int64_t k = 0; k < K; ++k) {
      const acc_t zk = logit(present, b, k, h, w), yk = label(present, b, k, h, w);
      p.dot += unary_dot_term<U, acc_t>(zk, yk, sigma(p, zk), eps);
      p.sum_y += yk;
    }
    p.value = unary_value<U, acc_t>(p.dot, p.sum_y, p.lse, eps);
    return p;
  }

  __device__ acc_t sigma(const Pixel& p, acc_t zk) const { return potts_exp(zk - p.max) * p.inv_total; }
};

template <typename scalar_t>
DeviceUnary<scalar_t> device_unary(const UnaryArgs& args) {
  DeviceUnary<scalar_t> u{};
  u.z = const_view4<scalar_t>(args.logits);
  u.y = const_view4<scalar_t>(args.y);
  if (args.mask.defined()) {
    u.mask = const_pixel_view<bool>(args.mask);
  }
  u.K = args.logits.size(1);
  u.H = args.logits.size(2);
  u.W = args.logits.size(3);
  u.eps = static_cast<at::opmath_type<scalar_t>>(args.eps);
  return u;
}

template <int U, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    unary_forward_kernel(const DeviceUnary<scalar_t> u, const View4<scalar_t> loss) {
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= u.H * u.W) return;
  const int64_t h = i / u.W, w = i % u.W;
  const bool present = !u.mask.data || u.mask(b, 0, h, w);
  const auto p = u.template reduce<U>(present, b, h, w);
  loss(b, 0, h, w) = static_cast<scalar_t>(present ? p.value : 0);
}

template <int U, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    unary_backward_kernel(const DeviceUnary<scalar_t> u, const View4<const scalar_t> grad_loss,
                          const View4<scalar_t> grad_z, const View4<scalar_t> grad_y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= u.H * u.W) return;
  const int64_t h = i / u.W, w = i % u.W;
  const bool present = !u.mask.data || u.mask(b, 0, h, w);
  const auto p = u.template reduce<U>(present, b, h, w);
  const acc_t go = present ? static_cast<acc_t>(grad_loss(b, 0, h, w)) : acc_t(0);
  for (int64_t k = 0; k < u.K; ++k) {
    const acc_t zk = u.logit(present, b, k, h, w), yk = u.label(present, b, k, h, w);
    const acc_t sk = u.sigma(p, zk);
    grad_z(b, k, h, w) =
        static_cast<scalar_t>(go * unary_grad_logit<U, acc_t>(zk, yk, sk, p.dot, p.sum_y, p.lse, p.value, u.eps));
    grad_y(b, k, h, w) = static_cast<scalar_t>(go * unary_grad_label<U, acc_t>(zk, yk, sk, p.dot, p.lse, u.eps));
  }
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
