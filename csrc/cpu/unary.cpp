// Fused softmax + unary H(y, softmax(z)) on the CPU, forward and backward, one image row at a time so
// that the inner loops run over contiguous w.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
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
    if (a.mask.defined()) mask = {a.mask.data_ptr<bool>(), a.mask.stride(0), 0, a.mask.stride(1), a.mask.stride(2)};
  }

  int64_t grain() const { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * K)); }

  // Per-pixel reductions of row (b, h): max m, log-sum-exp, the unary's dot product, sum of y and H.
  struct RowStats {
    std::vector<acc_t> m, log_z, dot, sum_y, value;
    explicit RowStats(int64_t W) : m(W), log_z(W), dot(W), sum_y(W), value(W) {}
  };

  template <int U>
  void stats(int64_t b, int64_t h, RowStats& st) const {
    std::fill(st.m.begin(), st.m.end(), -std::numeric_limits<acc_t>::infinity());
    std::fill(st.log_z.begin(), st.log_z.end(), acc_t(0));
    std::fill(st.dot.begin(), st.dot.end(), acc_t(0));
    std::fill(st.sum_y.begin(), st.sum_y.end(), acc_t(0));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t w = 0; w < W; ++w) st.m[w] = std::max(st.m[w], static_cast<acc_t>(z(b, k, h, w)));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t w = 0; w < W; ++w) st.log_z[w] += std::exp(static_cast<acc_t>(z(b, k, h, w)) - st.m[w]);
    for (int64_t w = 0; w < W; ++w) st.log_z[w] = std::log(st.log_z[w]);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t w = 0; w < W; ++w) {
        const acc_t zk = static_cast<acc_t>(z(b, k, h, w)), yk = static_cast<acc_t>(y(b, k, h, w));
        const acc_t sigma = std::exp(zk - st.m[w] - st.log_z[w]);
        st.dot[w] += unary_dot_term<U, acc_t>(zk, yk, sigma, eps);
        st.sum_y[w] += yk;
      }
    for (int64_t w = 0; w < W; ++w)
      st.value[w] = unary_value<U, acc_t>(st.dot[w], st.sum_y[w], st.m[w] + st.log_z[w], eps);
  }

  bool present(int64_t b, int64_t h, int64_t w) const { return !mask.data || mask(b, 0, h, w); }

  template <int U>
  void forward(const View4<scalar_t>& loss) const {
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      RowStats st(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        stats<U>(b, h, st);
        for (int64_t w = 0; w < W; ++w)
          loss(b, 0, h, w) = static_cast<scalar_t>(present(b, h, w) ? st.value[w] : acc_t(0));
      }
    });
  }

  template <int U>
  void backward(const View4<scalar_t>& grad_loss, const View4<scalar_t>& grad_z,
                const View4<scalar_t>& grad_y) const {
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      RowStats st(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        stats<U>(b, h, st);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t w = 0; w < W; ++w) {
            acc_t d_z = 0, d_y = 0;
            if (present(b, h, w)) {
              const acc_t zk = static_cast<acc_t>(z(b, k, h, w)), yk = static_cast<acc_t>(y(b, k, h, w));
              const acc_t lse = st.m[w] + st.log_z[w];
              const acc_t sigma = std::exp(zk - lse);
              unary_grads<U, acc_t>(zk, yk, sigma, st.dot[w], st.sum_y[w], lse, st.value[w], eps, &d_z, &d_y);
              const acc_t go = static_cast<acc_t>(grad_loss(b, 0, h, w));
              d_z *= go;
              d_y *= go;
            }
            grad_z(b, k, h, w) = static_cast<scalar_t>(d_z);
            grad_y(b, k, h, w) = static_cast<scalar_t>(d_y);
          }
      }
    });
  }
};

// (B, H, W) tensor as a 4-D view with a unit channel dimension.
template <typename T>
View4<T> pixel_view(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), 0, t.stride(1), t.stride(2)};
}

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
