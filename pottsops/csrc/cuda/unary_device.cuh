// The device side of the CUDA unary kernels (unary.cu): fused softmax + H(y, softmax(z)) per pixel, one
// thread per pixel.  Also compiled for the host (pottsops/device_code.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cmath>

#include "pottsops/device_code.h"
#include "pottsops/tensor_views.h"  // View4
#include "pottsops/relaxations.h"
#include "pottsops/unaries.h"
#include "pottsops/unary_args.h"

namespace pottsops {

template <typename scalar_t>
struct DeviceUnary {
  using acc_t = at::opmath_type<scalar_t>;
  View4<const scalar_t> z, y;
  View4<const bool> mask;
  int64_t K, H, W;
  acc_t eps;

  // Missing pixels read as z = 0, y = 1/K, so that whatever they hold never reaches a result.
  POTTS_DEVICE acc_t logit(bool present, int64_t b, int64_t k, int64_t h, int64_t w) const {
    return present ? static_cast<acc_t>(z(b, k, h, w)) : acc_t(0);
  }
  POTTS_DEVICE acc_t label(bool present, int64_t b, int64_t k, int64_t h, int64_t w) const {
    return present ? static_cast<acc_t>(y(b, k, h, w)) : acc_t(1) / static_cast<acc_t>(K);
  }

  // Per-pixel reductions: log-sum-exp of z, the unary's dot product, sum of y, and H.
  struct Pixel {
    acc_t max, inv_total, lse, dot, sum_y, value;
  };

  template <int U>
  POTTS_DEVICE Pixel reduce(bool present, int64_t b, int64_t h, int64_t w) const {
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

  POTTS_DEVICE acc_t sigma(const Pixel& p, acc_t zk) const { return potts_exp(zk - p.max) * p.inv_total; }
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

// The work of one thread of the unary kernels (unary.cu): pixel i = h * W + w of image b.

// The pixel's H(y, softmax(z)), 0 where masked (unary_loss).
template <int U, typename scalar_t>
POTTS_DEVICE void unary_forward_pixel(const DeviceUnary<scalar_t>& u, const View4<scalar_t>& loss, int64_t b,
                                      int64_t i) {
  const int64_t h = i / u.W, w = i % u.W;
  const bool present = !u.mask.data || u.mask(b, 0, h, w);
  const auto p = u.template reduce<U>(present, b, h, w);
  loss(b, 0, h, w) = static_cast<scalar_t>(present ? p.value : 0);
}

// The pixel's gradients to z and y of grad_loss times H (unary_loss_backward).
template <int U, typename scalar_t>
POTTS_DEVICE void unary_backward_pixel(const DeviceUnary<scalar_t>& u, const View4<const scalar_t>& grad_loss,
                                       const View4<scalar_t>& grad_z, const View4<scalar_t>& grad_y, int64_t b,
                                       int64_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t h = i / u.W, w = i % u.W;
  const bool present = !u.mask.data || u.mask(b, 0, h, w);
  const auto p = u.template reduce<U>(present, b, h, w);
  const acc_t go = present ? static_cast<acc_t>(grad_loss(b, 0, h, w)) : acc_t(0);
  for (int64_t k = 0; k < u.K; ++k) {
    const acc_t zk = u.logit(present, b, k, h, w), yk = u.label(present, b, k, h, w);
    const acc_t sk = u.sigma(p, zk);
    grad_z(b, k, h, w) =
        narrow<scalar_t>(go * unary_grad_logit<U, acc_t>(zk, yk, sk, p.dot, p.sum_y, p.lse, p.value, u.eps));
    grad_y(b, k, h, w) = narrow<scalar_t>(go * unary_grad_label<U, acc_t>(zk, yk, sk, p.dot, p.lse, u.eps));
  }
}

}  // namespace pottsops
