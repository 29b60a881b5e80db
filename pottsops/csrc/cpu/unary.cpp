// Fused softmax + unary H(y, softmax(z)) on the CPU, forward and backward, one image row at a time so
// that the inner loops run over contiguous w.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/unaries.h"
#include "pottsops/unary_args.h"

namespace pottsops {
namespace {

template <typename scalar_t>
struct UnaryRows {
  using acc_t = at::opmath_type<scalar_t>;

  int64_t B, K, H, W;
  View4<scalar_t> z, y;
  View4<bool> mask{};
  acc_t eps;

  explicit UnaryRows(const UnaryArgs& a)
      : B(a.logits.size(0)),
        K(a.logits.size(1)),
        H(a.logits.size(2)),
        W(a.logits.size(3)),
        z(view4<scalar_t>(a.logits)),
        y(view4<scalar_t>(a.y)),
        eps(static_cast<acc_t>(a.eps)) {
    if (a.mask.defined()) mask = pixel_view<bool>(a.mask);
  }

  int64_t grain() const { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * K)); }

  // One row (b, h) in the accumulation type, contiguous in w, with the per-pixel reductions: log-sum-exp
  // of z, the unary's dot product, sum of y and H.  Missing pixels get z = 0, y = 1/K (finite values).
  struct Row {
    std::vector<acc_t> z, y, sigma;  // K * W
    std::vector<acc_t> lse, dot, sum_y, value, total;
    std::vector<uint8_t> present;
  };

  template <int U>
  void load(Row& row, int64_t b, int64_t h) const {
    const acc_t eps = this->eps;  // a local, so that stores cannot alias it and loops vectorise
    row.z.resize(K * W);
    row.y.resize(K * W);
    row.sigma.resize(K * W);
    row.present.assign(W, 1);
    if (mask.data) copy_strided(mask.at(b, 0, h, 0), mask.sw, row.present.data(), 1, W);
    const uint8_t* __restrict__ present = row.present.data();
    for (int64_t k = 0; k < K; ++k) {
      acc_t* __restrict__ zk = row.z.data() + k * W;
      acc_t* __restrict__ yk = row.y.data() + k * W;
      copy_strided(z.at(b, k, h, 0), z.sw, zk, 1, W);
      copy_strided(y.at(b, k, h, 0), y.sw, yk, 1, W);
      if (mask.data)
        for (int64_t w = 0; w < W; ++w) {
          zk[w] = present[w] ? zk[w] : acc_t(0);
          yk[w] = present[w] ? yk[w] : acc_t(1) / static_cast<acc_t>(K);
        }
    }
    row.lse.assign(W, -std::numeric_limits<acc_t>::infinity());
    row.dot.assign(W, acc_t(0));
    row.sum_y.assign(W, acc_t(0));
    row.value.resize(W);
    acc_t* __restrict__ lse = row.lse.data();
    acc_t* __restrict__ dot = row.dot.data();
    acc_t* __restrict__ sum_y = row.sum_y.data();
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* __restrict__ zk = row.z.data() + k * W;
      for (int64_t w = 0; w < W; ++w) lse[w] = std::max(lse[w], zk[w]);  // the max, for now
    }
    row.total.assign(W, acc_t(0));
    acc_t* __restrict__ total = row.total.data();
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* __restrict__ zk = row.z.data() + k * W;
      acc_t* __restrict__ ek = row.sigma.data() + k * W;
      for (int64_t w = 0; w < W; ++w) {
        ek[w] = potts_exp(zk[w] - lse[w]);
        total[w] += ek[w];
      }
    }
    for (int64_t w = 0; w < W; ++w) {
      lse[w] += potts_log(total[w]);
      total[w] = acc_t(1) / total[w];  // from here on the inverse
    }
    for (int64_t k = 0; k < K; ++k) {
      acc_t* __restrict__ sk = row.sigma.data() + k * W;
      for (int64_t w = 0; w < W; ++w) sk[w] *= total[w];
    }
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* __restrict__ zk = row.z.data() + k * W;
      const acc_t* __restrict__ yk = row.y.data() + k * W;
      const acc_t* __restrict__ sk = row.sigma.data() + k * W;
      for (int64_t w = 0; w < W; ++w) {
        dot[w] += unary_dot_term<U, acc_t>(zk[w], yk[w], sk[w], eps);
        sum_y[w] += yk[w];
      }
    }
    for (int64_t w = 0; w < W; ++w) row.value[w] = unary_value<U, acc_t>(dot[w], sum_y[w], lse[w], eps);
  }

  template <int U>
  void forward(const View4<scalar_t>& loss) const {
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      Row row;
      std::vector<acc_t> out(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        load<U>(row, b, h);
        for (int64_t w = 0; w < W; ++w) out[w] = row.present[w] ? row.value[w] : acc_t(0);
        copy_strided(out.data(), 1, loss.at(b, 0, h, 0), loss.sw, W);
      }
    });
  }

  template <int U>
  void backward(const View4<scalar_t>& grad_loss, const View4<scalar_t>& grad_z, const View4<scalar_t>& grad_y) const {
    const acc_t eps = this->eps;
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      Row row;
      std::vector<acc_t> go(W), d_z(W), d_y(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        load<U>(row, b, h);
        copy_strided(grad_loss.at(b, 0, h, 0), grad_loss.sw, go.data(), 1, W);
        for (int64_t w = 0; w < W; ++w) go[w] = row.present[w] ? go[w] : acc_t(0);
        const acc_t* __restrict__ dot = row.dot.data();
        const acc_t* __restrict__ sum_y = row.sum_y.data();
        const acc_t* __restrict__ lse = row.lse.data();
        const acc_t* __restrict__ value = row.value.data();
        const acc_t* __restrict__ scale = go.data();
        acc_t* __restrict__ out_z = d_z.data();
        acc_t* __restrict__ out_y = d_y.data();
        for (int64_t k = 0; k < K; ++k) {
          const acc_t* __restrict__ zk = row.z.data() + k * W;
          const acc_t* __restrict__ yk = row.y.data() + k * W;
          const acc_t* __restrict__ sk = row.sigma.data() + k * W;
          for (int64_t w = 0; w < W; ++w)
            out_z[w] = scale[w] * unary_grad_logit<U, acc_t>(zk[w], yk[w], sk[w], dot[w], sum_y[w], lse[w], value[w], eps);
          for (int64_t w = 0; w < W; ++w)
            out_y[w] = scale[w] * unary_grad_label<U, acc_t>(zk[w], yk[w], sk[w], dot[w], lse[w], eps);
          copy_strided(out_z, 1, grad_z.at(b, k, h, 0), grad_z.sw, W);
          copy_strided(out_y, 1, grad_y.at(b, k, h, 0), grad_y.sw, W);
        }
      }
    });
  }
};

at::Tensor unary_loss_cpu(const at::Tensor& logits, const at::Tensor& y, const c10::optional<at::Tensor>& mask,
                          int64_t kind, double eps) {
  const UnaryArgs args = make_unary_args(logits, y, mask, kind, eps);
  at::Tensor loss = at::empty({logits.size(0), logits.size(2), logits.size(3)}, logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unary_loss_cpu", [&] {
    const UnaryRows<scalar_t> rows(args);
    POTTS_DISPATCH_UNARY(args.kind, [&] { rows.template forward<U>(pixel_view<scalar_t>(loss)); });
  });
  return loss;
}

std::tuple<at::Tensor, at::Tensor> unary_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                           const at::Tensor& y,
                                                           const c10::optional<at::Tensor>& mask, int64_t kind,
                                                           double eps) {
  const UnaryArgs args = make_unary_args(logits, y, mask, kind, eps);
  check_unary_grad(grad_loss, logits);
  const at::Tensor go = grad_loss.to(logits.scalar_type());
  at::Tensor grad_z = at::empty_like(logits), grad_y = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unary_loss_backward_cpu", [&] {
    const UnaryRows<scalar_t> rows(args);
    POTTS_DISPATCH_UNARY(args.kind, [&] {
      rows.template backward<U>(pixel_view<scalar_t>(go), view4<scalar_t>(grad_z), view4<scalar_t>(grad_y));
    });
  });
  return {grad_z, grad_y};
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CPU, m) {
  m.impl("unary_loss", &unary_loss_cpu);
  m.impl("unary_loss_backward", &unary_loss_backward_cpu);
}

}  // namespace pottsops
