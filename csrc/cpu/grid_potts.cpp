// Grid and window Potts energies, gradients and affinities on the CPU.
//
// Work is split over image rows (at::parallel_for over B * H rows): for one row and one offset the
// kernels first fill per-row buffers (edge weight, validity, dot product s) with loops over contiguous
// w, then apply the relaxation table.  The gradient of a pixel gathers the contributions of the pairs
// that start at it and of the pairs that end at it, so every output is written once by one thread:
// no atomics, and results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"

namespace pottsops {
namespace {

template <typename scalar_t>
struct GridRows {
  using acc_t = at::opmath_type<scalar_t>;

  const GridArgs& args;
  int64_t B, K, H, W, C = 0;
  View4<scalar_t> y{};
  View4<acc_t> image{}, weights{};
  View4<bool> mask{};
  const acc_t* inv_two_sigma2 = nullptr;
  at::Tensor norms;  // (B, H, W) contiguous: a_i = |y_i|^2, computed once per call
  const acc_t* norm = nullptr;

  // with_labels = false for the affinity op, which has an image but no y.
  explicit GridRows(const GridArgs& a, bool with_labels = true)
      : args(a),
        B((with_labels ? a.y : a.image).size(0)),
        K(with_labels ? a.y.size(1) : 0),
        H((with_labels ? a.y : a.image).size(2)),
        W((with_labels ? a.y : a.image).size(3)) {
    if (with_labels) y = view4<scalar_t>(a.y);
    if (a.image.defined()) {
      image = view4<acc_t>(a.image);
      C = a.image.size(1);
      inv_two_sigma2 = a.inv_two_sigma2.data_ptr<acc_t>();
    }
    if (a.weights.defined()) weights = view4<acc_t>(a.weights);
    if (a.mask.defined()) {
      const at::Tensor& m = a.mask;
      mask = {m.data_ptr<bool>(), m.stride(0), 0, m.stride(1), m.stride(2)};
    }
    if (with_labels) compute_norms();
  }

  int64_t grain() const { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, W * (K + C + 1))); }

  void compute_norms() {
    norms = at::empty({B, H, W}, args.y.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* out = norms.data_ptr<acc_t>();
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        acc_t* row = out + r * W;
        std::fill(row, row + W, acc_t(0));
        for (int64_t k = 0; k < K; ++k)
          for (int64_t w = 0; w < W; ++w) {
            const acc_t v = static_cast<acc_t>(y(b, k, h, w));
            row[w] += v * v;
          }
      }
    });
    norm = out;
  }

  acc_t norm_at(int64_t b, int64_t h, int64_t w) const { return norm[(b * H + h) * W + w]; }

  // Columns w for which the pair (h, w) -> (h + dy, w + dx) of offset e lies inside the image.
  bool pair_columns(int64_t h, int64_t e, int64_t& w0, int64_t& w1) const {
    const int64_t dy = args.dy[e], dx = args.dx[e];
    if (h + dy >= H) return false;
    w0 = std::max<int64_t>(0, -dx);
    w1 = std::min<int64_t>(W, W - dx);
    return w0 < w1;
  }

  // Edge weight and validity of the pairs of offset e starting in row h; invalid pairs get weight 0.
  void pair_weights(int64_t b, int64_t h, int64_t e, int64_t w0, int64_t w1, acc_t* wt,
                    uint8_t* valid) const {
    const int64_t h2 = h + args.dy[e], dx = args.dx[e];
    const acc_t spatial = static_cast<acc_t>(args.spatial[e]);
    if (weights.data) {
      for (int64_t w = w0; w < w1; ++w) wt[w] = weights(b, e, h, w);
    } else if (image.data) {
      std::fill(wt + w0, wt + w1, acc_t(0));
      for (int64_t c = 0; c < C; ++c)
        for (int64_t w = w0; w < w1; ++w) {
          const acc_t d = image(b, c, h, w) - image(b, c, h2, w + dx);
          wt[w] += d * d;
        }
      const acc_t scale = inv_two_sigma2[b];
      for (int64_t w = w0; w < w1; ++w) wt[w] = spatial * std::exp(-wt[w] * scale);
    } else {
      std::fill(wt + w0, wt + w1, spatial);
    }
    if (mask.data) {
      for (int64_t w = w0; w < w1; ++w) {
        valid[w] = mask(b, 0, h, w) && mask(b, 0, h2, w + dx);
        if (!valid[w]) wt[w] = acc_t(0);
      }
    } else {
      std::fill(valid + w0, valid + w1, uint8_t(1));
    }
  }

  // s = y_i . y_j for the pairs of offset e starting in row h.
  void pair_dots(int64_t b, int64_t h, int64_t e, int64_t w0, int64_t w1, acc_t* s) const {
    const int64_t h2 = h + args.dy[e], dx = args.dx[e];
    std::fill(s + w0, s + w1, acc_t(0));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t w = w0; w < w1; ++w)
        s[w] += static_cast<acc_t>(y(b, k, h, w)) * static_cast<acc_t>(y(b, k, h2, w + dx));
  }

  template <int R>
  void energy(acc_t* row_energy) const {
    const acc_t eps = static_cast<acc_t>(args.eps);
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> s(W), wt(W);
      std::vector<uint8_t> valid(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        acc_t total = 0;
        for (int64_t e = 0; e < args.num_offsets(); ++e) {
          int64_t w0, w1;
          if (!pair_columns(h, e, w0, w1)) continue;
          const int64_t h2 = h + args.dy[e], dx = args.dx[e];
          pair_weights(b, h, e, w0, w1, wt.data(), valid.data());
          pair_dots(b, h, e, w0, w1, s.data());
          for (int64_t w = w0; w < w1; ++w) {
            if (!valid[w]) continue;
            const PairTerms<acc_t> t =
                pair_terms<R, acc_t>(s[w], norm_at(b, h, w), norm_at(b, h2, w + dx), eps);
            total += wt[w] * t.value;
          }
        }
        row_energy[r] = total;
      }
    });
  }

  // grad_y = d(sum_b grad_energy[b] E_b)/dy; grad_weights (contiguous, zero-filled) if not null.
  template <int R>
  void backward(const acc_t* grad_energy, const View4<scalar_t>& grad_y, acc_t* grad_weights) const {
    const acc_t eps = static_cast<acc_t>(args.eps);
    const int64_t E = args.num_offsets();
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(K * W), self_coef(W), pair_coef(W), s(W), wt(W);
      std::vector<uint8_t> valid(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        const acc_t go = grad_energy[b];
        std::fill(acc.begin(), acc.end(), acc_t(0));
        std::fill(self_coef.begin(), self_coef.end(), acc_t(0));
        for (int64_t e = 0; e < E; ++e) {
          const int64_t dy = args.dy[e], dx = args.dx[e];
          int64_t w0, w1;
          // Pairs (h, w) -> (h + dy, w + dx): this row holds the first endpoint p.
          if (pair_columns(h, e, w0, w1)) {
            pair_weights(b, h, e, w0, w1, wt.data(), valid.data());
            pair_dots(b, h, e, w0, w1, s.data());
            for (int64_t w = w0; w < w1; ++w) {
              pair_coef[w] = acc_t(0);
              if (!valid[w]) continue;
              const PairTerms<acc_t> t =
                  pair_terms<R, acc_t>(s[w], norm_at(b, h, w), norm_at(b, h + dy, w + dx), eps);
              const acc_t c = go * wt[w];
              self_coef[w] += 2 * c * t.d_a;
              pair_coef[w] = c * t.d_s;
              if (grad_weights) grad_weights[((b * E + e) * H + h) * W + w] = go * t.value;
            }
            for (int64_t k = 0; k < K; ++k)
              for (int64_t w = w0; w < w1; ++w)
                if (valid[w]) acc[k * W + w] += pair_coef[w] * static_cast<acc_t>(y(b, k, h + dy, w + dx));
          }
          // Pairs (h - dy, w - dx) -> (h, w): this row holds the second endpoint q.
          const int64_t h0 = h - dy;
          if (h0 >= 0 && pair_columns(h0, e, w0, w1)) {
            pair_weights(b, h0, e, w0, w1, wt.data(), valid.data());
            pair_dots(b, h0, e, w0, w1, s.data());
            for (int64_t w = w0; w < w1; ++w) {
              pair_coef[w] = acc_t(0);
              if (!valid[w]) continue;
              const PairTerms<acc_t> t =
                  pair_terms<R, acc_t>(s[w], norm_at(b, h0, w), norm_at(b, h, w + dx), eps);
              const acc_t c = go * wt[w];
              self_coef[w + dx] += 2 * c * t.d_b;
              pair_coef[w] = c * t.d_s;
            }
            for (int64_t k = 0; k < K; ++k)
              for (int64_t w = w0; w < w1; ++w)
                if (valid[w]) acc[k * W + w + dx] += pair_coef[w] * static_cast<acc_t>(y(b, k, h0, w));
          }
        }
        for (int64_t k = 0; k < K; ++k)
          for (int64_t w = 0; w < W; ++w) {
            const bool present = !mask.data || mask(b, 0, h, w);
            const acc_t g = acc[k * W + w] + self_coef[w] * static_cast<acc_t>(y(b, k, h, w));
            grad_y(b, k, h, w) = static_cast<scalar_t>(present ? g : acc_t(0));
          }
      }
    });
  }

  void affinity(const View4<acc_t>& out) const {
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> wt(W);
      std::vector<uint8_t> valid(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        for (int64_t e = 0; e < args.num_offsets(); ++e) {
          int64_t w0 = 0, w1 = 0;
          if (pair_columns(h, e, w0, w1)) pair_weights(b, h, e, w0, w1, wt.data(), valid.data());
          for (int64_t w = 0; w < W; ++w) out(b, e, h, w) = (w >= w0 && w < w1) ? wt[w] : acc_t(0);
        }
      }
    });
  }
};

// Per-image sums of per-row partials, in row order: deterministic for any thread count.
at::Tensor sum_rows(const at::Tensor& row_energy, int64_t B, int64_t H) {
  return row_energy.view({B, H}).sum(1);
}

at::Tensor grid_potts_energy_cpu(const at::Tensor& y, const c10::optional<at::Tensor>& image,
                                 const c10::optional<at::Tensor>& weights,
                                 const c10::optional<at::Tensor>& mask,
                                 const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
                                 at::ArrayRef<double> spatial, int64_t relaxation, double eps) {
  const GridArgs args =
      make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  const int64_t B = y.size(0), H = y.size(2);
  at::Tensor row_energy = at::empty({B * H}, y.options().dtype(accumulation_type(y.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "grid_potts_energy_cpu", [&] {
    const GridRows<scalar_t> rows(args);
    auto* out = row_energy.data_ptr<at::opmath_type<scalar_t>>();
    POTTS_DISPATCH_RELAXATION(args.relaxation, [&] { rows.template energy<R>(out); });
  });
  return sum_rows(row_energy, B, H).to(y.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> grid_potts_energy_backward_cpu(
    const at::Tensor& grad_energy, const at::Tensor& y, const c10::optional<at::Tensor>& image,
    const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial,
    int64_t relaxation, double eps, bool weights_grad) {
  const GridArgs args =
      make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  TORCH_CHECK(grad_energy.dim() == 1 && grad_energy.size(0) == y.size(0),
              "grad_energy: expected shape (", y.size(0), "), got ", grad_energy.sizes());
  TORCH_CHECK(!weights_grad || args.weights.defined(), "weights_grad: requires weights");
  const at::ScalarType acc = accumulation_type(y.scalar_type());
  const at::Tensor go = grad_energy.to(acc).contiguous();
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_w = weights_grad ? at::zeros(args.weights.sizes(), args.weights.options())
                                   : at::empty({0}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "grid_potts_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const GridRows<scalar_t> rows(args);
    const View4<scalar_t> out = view4<scalar_t>(grad_y);
    acc_t* gw = weights_grad ? grad_w.data_ptr<acc_t>() : nullptr;
    POTTS_DISPATCH_RELAXATION(args.relaxation,
                              [&] { rows.template backward<R>(go.data_ptr<acc_t>(), out, gw); });
  });
  if (weights_grad) grad_w = grad_w.to(weights->scalar_type());
  return {grad_y, grad_w};
}

at::Tensor grid_affinity_cpu(const at::Tensor& image, const c10::optional<at::Tensor>& mask,
                             const at::Tensor& inv_two_sigma2, at::IntArrayRef offsets,
                             at::ArrayRef<double> spatial) {
  const GridArgs args = make_affinity_args(image, mask, inv_two_sigma2, offsets, spatial);
  at::Tensor out = at::empty({image.size(0), args.num_offsets(), image.size(2), image.size(3)},
                             args.image.options());
  AT_DISPATCH_FLOATING_TYPES(args.image.scalar_type(), "grid_affinity_cpu", [&] {
    const GridRows<scalar_t> rows(args, /*with_labels=*/false);
    rows.affinity(view4<scalar_t>(out));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CPU, m) {
  m.impl("grid_potts_energy", &grid_potts_energy_cpu);
  m.impl("grid_potts_energy_backward", &grid_potts_energy_backward_cpu);
  m.impl("grid_affinity", &grid_affinity_cpu);
}

}  // namespace pottsops
