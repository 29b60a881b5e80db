// The CPU grid/window Potts kernel (GridKernel), shared by the grid ops (grid_potts.cpp) and the CPU solver
// (solver.cpp).
//
// Work is split over image rows (at::parallel_for over a range of the B * H rows).  Each thread keeps the
// rows it needs (h - reach .. h + reach, reach = the largest dy) in a small cache, converted to the
// accumulation type with contiguous w and masked-out pixels zeroed, so that every inner loop runs over
// contiguous memory and vectorises.  Each pair's weight and relaxation terms are computed once per
// pass: the backward pass stores, per row, the coefficients of the pairs that start there, and the
// gradient of a pixel gathers those of the pairs that start and that end at it.  Every output is written
// by one thread: no atomics, and results do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "cpu/solver_row.h"

namespace pottsops {
// A ring of per-row records keyed by (image, row), holding rows h - size + 1 .. h when used in order.
template <typename Row>
class RowRing {
 public:
  explicit RowRing(int64_t size) : rows_(size), keys_(size, -1) {}
  // The record of row `key`; `fill(record)` runs when it is not already there.
  template <typename Fill>
  Row& get(int64_t key, Fill&& fill) {
    const int64_t slot = key % static_cast<int64_t>(rows_.size());
    if (keys_[slot] != key) {
      fill(rows_[slot]);
      keys_[slot] = key;
    }
    return rows_[slot];
  }

 private:
  std::vector<Row> rows_;
  std::vector<int64_t> keys_;
};

// Sum of x[0..n) in a fixed order with 16 running partial sums, which vectorises (a single running sum
// does not: the compiler may not reorder float additions).
template <typename T>
T lane_sum(const T* __restrict__ x, int64_t n) {
  constexpr int64_t kLanes = 16;
  T part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) part[j] += x[i + j];
  for (int64_t j = 0; i < n; ++i, ++j) part[j] += x[i];
  T total = 0;
  for (int64_t j = 0; j < kLanes; ++j) total += part[j];
  return total;
}

// Per pair of one row and offset, from s = p.q, a = |p|^2, b = |q|^2 and the weight wt: the coefficients
// of backward_rows and, in wt, the weighted pair energy; pairs of weight 0 get zeros.  Restrict pointer
// arguments (not locals: those the compiler may ignore) so that the loop vectorises.
template <int R, typename T>
void pair_coefficients(int64_t n, const T* __restrict__ s, const T* __restrict__ a, const T* __restrict__ b, T go,
                       T eps, T* __restrict__ wt, T* __restrict__ self_p, T* __restrict__ cross,
                       T* __restrict__ self_q) {
  for (int64_t w = 0; w < n; ++w) {
    const PairTerms<T> t = pair_terms<R, T>(s[w], a[w], b[w], eps);
    const bool valid = wt[w] != T(0);
    const T scale = go * wt[w];
    self_p[w] = valid ? 2 * scale * t.d_a : T(0);
    cross[w] = valid ? scale * t.d_s : T(0);
    self_q[w] = valid ? 2 * scale * t.d_b : T(0);
    wt[w] = valid ? scale * t.value : T(0);
  }
}

template <typename scalar_t>
struct GridKernel {
  using acc_t = at::opmath_type<scalar_t>;

  // One image row in the accumulation type, contiguous in w; masked-out pixels hold zeros.
  struct Row {
    std::vector<acc_t> labels;  // K * W
    std::vector<acc_t> norm;    // W: |y_i|^2
    std::vector<acc_t> image;   // C * W
    std::vector<uint8_t> present;
  };

  // Per offset, for the pairs starting in one row: coefficient of p in dE/dp (2 go w dP/da), of q in
  // dE/dp and of p in dE/dq (go w dP/ds), and of q in dE/dq (2 go w dP/db).  Zero for invalid pairs.
  struct Coefficients {
    std::vector<acc_t> self_p, cross, self_q;  // E * W each
  };

  const GridArgs& args;
  int64_t B, K, H, W, C = 0, E, reach = 0;
  View4<scalar_t> y{};
  View4<acc_t> image{}, weights{};
  View4<bool> mask{};
  const acc_t* inv_two_sigma2 = nullptr;
  acc_t eps;

  // with_labels = false for the affinity op, which has an image but no y.
  GridKernel(const GridArgs& a, bool labels)
      : args(a),
        B((labels ? a.y : a.image).size(0)),
        K(labels ? a.y.size(1) : 0),
        H((labels ? a.y : a.image).size(2)),
        W((labels ? a.y : a.image).size(3)),
        E(a.num_offsets()),
        eps(static_cast<acc_t>(a.eps)) {
    if (labels) y = view4<scalar_t>(a.y);
    if (a.image.defined()) {
      image = view4<acc_t>(a.image);
      C = a.image.size(1);
      inv_two_sigma2 = a.inv_two_sigma2.data_ptr<acc_t>();
    }
    if (a.weights.defined()) weights = view4<acc_t>(a.weights);
    if (a.mask.defined()) mask = pixel_view<bool>(a.mask);
    for (int64_t dy : a.dy) reach = std::max(reach, std::min(dy, H - 1));  // rows past the image hold no pair
  }

  int64_t grain() const { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, W * (K + C + 1) * E)); }

  void load(Row& row, int64_t b, int64_t h) const {
    row.present.assign(W, 1);
    if (mask.data) copy_strided(mask.at(b, 0, h, 0), mask.sw, row.present.data(), 1, W);
    const uint8_t* __restrict__ present = row.present.data();
    row.labels.resize(K * W);
    row.norm.assign(W, acc_t(0));
    acc_t* __restrict__ norm = row.norm.data();
    for (int64_t k = 0; k < K; ++k) {
      acc_t* __restrict__ out = row.labels.data() + k * W;
      copy_strided(y.at(b, k, h, 0), y.sw, out, 1, W);
      if (mask.data)
        for (int64_t w = 0; w < W; ++w) out[w] = present[w] ? out[w] : acc_t(0);
      for (int64_t w = 0; w < W; ++w) norm[w] += out[w] * out[w];
    }
    if (image.data && !weights.data) {
      row.image.resize(C * W);
      for (int64_t c = 0; c < C; ++c) {
        acc_t* __restrict__ out = row.image.data() + c * W;
        copy_strided(image.at(b, c, h, 0), image.sw, out, 1, W);
        if (mask.data)
          for (int64_t w = 0; w < W; ++w) out[w] = present[w] ? out[w] : acc_t(0);
      }
    }
  }

  // Columns w for which the pair (h, w) -> (h + dy, w + dx) of offset e lies inside the image.
  bool pair_columns(int64_t h, int64_t e, int64_t& w0, int64_t& w1) const {
    if (h + args.dy[e] >= H) return false;
    w0 = std::max<int64_t>(0, -args.dx[e]);
    w1 = std::min<int64_t>(W, W - args.dx[e]);
    return w0 < w1;
  }

  // Edge weights of the pairs (p row h, q row h + dy) of offset e, 0 where either end is missing.
  void pair_weights(const Row& p, const Row& q, int64_t b, int64_t h, int64_t e, int64_t w0, int64_t w1,
                    acc_t* __restrict__ wt) const {
    const int64_t dx = args.dx[e];
    const acc_t spatial = static_cast<acc_t>(args.spatial[e]);
    if (weights.data) {
      copy_strided(weights.at(b, e, h, w0), weights.sw, wt + w0, 1, w1 - w0);
    } else if (image.data) {
      for (int64_t w = w0; w < w1; ++w) wt[w] = acc_t(0);
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* __restrict__ ip = p.image.data() + c * W;
        const acc_t* __restrict__ iq = q.image.data() + c * W + dx;
        for (int64_t w = w0; w < w1; ++w) wt[w] += (ip[w] - iq[w]) * (ip[w] - iq[w]);
      }
      const acc_t scale = -inv_two_sigma2[b];
      for (int64_t w = w0; w < w1; ++w) wt[w] = spatial * potts_exp(wt[w] * scale);
    } else {
      for (int64_t w = w0; w < w1; ++w) wt[w] = spatial;
    }
    const uint8_t* __restrict__ pp = p.present.data();
    const uint8_t* __restrict__ pq = q.present.data() + dx;
    for (int64_t w = w0; w < w1; ++w) wt[w] = (pp[w] & pq[w]) ? wt[w] : acc_t(0);
  }

  // s = p . q for the pairs of offset e.
  void pair_dots(const Row& p, const Row& q, int64_t e, int64_t w0, int64_t w1, acc_t* __restrict__ s) const {
    const int64_t dx = args.dx[e];
    for (int64_t w = w0; w < w1; ++w) s[w] = acc_t(0);
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* __restrict__ yp = p.labels.data() + k * W;
      const acc_t* __restrict__ yq = q.labels.data() + k * W + dx;
      for (int64_t w = w0; w < w1; ++w) s[w] += yp[w] * yq[w];
    }
  }

  template <int R>
  void energy(acc_t* row_energy) const {
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      RowRing<Row> rows(reach + 1);
      std::vector<acc_t> s(W), wt(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        auto row = [&](int64_t hh) -> const Row& {
          return rows.get(b * H + hh, [&](Row& x) { load(x, b, hh); });
        };
        const Row& p = row(h);
        acc_t total = 0;
        for (int64_t e = 0; e < E; ++e) {
          int64_t w0, w1;
          if (!pair_columns(h, e, w0, w1)) continue;
          const Row& q = row(h + args.dy[e]);
          const acc_t* __restrict__ nq = q.norm.data() + args.dx[e];
          pair_weights(p, q, b, h, e, w0, w1, wt.data());
          pair_dots(p, q, e, w0, w1, s.data());
          for (int64_t w = w0; w < w1; ++w) {  // s becomes the weighted pair energy
            const acc_t value = pair_terms<R, acc_t>(s[w], p.norm[w], nq[w], eps).value;
            s[w] = wt[w] != acc_t(0) ? wt[w] * value : acc_t(0);
          }
          total += lane_sum(s.data() + w0, w1 - w0);
        }
        row_energy[r] = total;
      }
    });
  }

  // grad_y = d(sum_b grad_energy[b] E_b)/dy; grad_weights (contiguous (B, E, H, W)) if not null.
  template <int R>
  void backward(const acc_t* grad_energy, const View4<scalar_t>& grad_y, acc_t* grad_weights) const {
    backward_rows<R>(grad_energy, grad_weights, nullptr, 0, B * H,
                     [&](int64_t b, int64_t h, const acc_t* acc, const Row&) {
                       for (int64_t k = 0; k < K; ++k) copy_strided(acc + k * W, 1, grad_y.at(b, k, h, 0), grad_y.sw, W);
                     });
  }

  // The gradient of each image row (b, h), K x W in acc (class-major), is handed to finish(b, h, acc, row of
  // h); row_energy (B * H, zeroed), if not null, gets grad_energy[b] times the energy of the pairs that
  // start in each row, so that one pass gives the energy and its gradient.  Rows first_row .. last_row - 1
  // of the B * H (all of them, or one image's).
  template <int R, typename Finish>
  void backward_rows(const acc_t* grad_energy, acc_t* grad_weights, acc_t* row_energy, int64_t first_row,
                     int64_t last_row, Finish&& finish) const {
    at::parallel_for(first_row, last_row, grain(), [&](int64_t begin, int64_t end) {
      RowRing<Row> rows(2 * reach + 1);
      RowRing<Coefficients> coefficients(reach + 1);
      std::vector<acc_t> s(W), wt(W), self(W), acc(K * W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        const acc_t go = grad_energy[b];
        auto row = [&](int64_t hh) -> const Row& {
          return rows.get(b * H + hh, [&](Row& x) { load(x, b, hh); });
        };
        auto coefficients_of = [&](int64_t hh) -> const Coefficients& {
          return coefficients.get(b * H + hh, [&](Coefficients& c) {
            const bool own = b * H + hh >= begin;  // rows before `begin` are another thread's to write
            fill_coefficients<R>(c, row, b, hh, go, s.data(), wt.data(), own ? grad_weights : nullptr,
                                 own && row_energy ? row_energy + b * H + hh : nullptr);
          });
        };
        std::fill(self.begin(), self.end(), acc_t(0));
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t e = 0; e < E; ++e) {
          const int64_t dy = args.dy[e], dx = args.dx[e];
          int64_t w0, w1;
          if (pair_columns(h, e, w0, w1)) {  // pairs (h, w) -> (h + dy, w + dx): this pixel is p
            const Coefficients& c = coefficients_of(h);
            const Row& q = row(h + dy);
            const acc_t* __restrict__ self_p = c.self_p.data() + e * W;
            const acc_t* __restrict__ cross = c.cross.data() + e * W;
            for (int64_t w = w0; w < w1; ++w) self[w] += self_p[w];
            for (int64_t k = 0; k < K; ++k) {
              acc_t* __restrict__ out = acc.data() + k * W;
              const acc_t* __restrict__ yq = q.labels.data() + k * W + dx;
              for (int64_t w = w0; w < w1; ++w) out[w] += cross[w] * yq[w];
            }
          }
          if (h - dy >= 0 && pair_columns(h - dy, e, w0, w1)) {  // pairs (h - dy, w) -> (h, w + dx): q
            const Coefficients& c = coefficients_of(h - dy);
            const Row& p = row(h - dy);
            const acc_t* __restrict__ self_q = c.self_q.data() + e * W;
            const acc_t* __restrict__ cross = c.cross.data() + e * W;
            acc_t* __restrict__ self_shifted = self.data() + dx;
            for (int64_t w = w0; w < w1; ++w) self_shifted[w] += self_q[w];
            for (int64_t k = 0; k < K; ++k) {
              acc_t* __restrict__ out = acc.data() + k * W + dx;
              const acc_t* __restrict__ yp = p.labels.data() + k * W;
              for (int64_t w = w0; w < w1; ++w) out[w] += cross[w] * yp[w];
            }
          }
        }
        const Row& own = row(h);
        for (int64_t k = 0; k < K; ++k) {
          acc_t* __restrict__ out = acc.data() + k * W;
          const acc_t* __restrict__ yk = own.labels.data() + k * W;
          for (int64_t w = 0; w < W; ++w) out[w] += self[w] * yk[w];
        }
        finish(b, h, acc.data(), own);
      }
    });
  }

  template <int R, typename RowOf>
  void fill_coefficients(Coefficients& c, RowOf&& row, int64_t b, int64_t h, acc_t go, acc_t* s, acc_t* wt,
                         acc_t* grad_weights, acc_t* energy) const {
    c.self_p.assign(E * W, acc_t(0));
    c.cross.assign(E * W, acc_t(0));
    c.self_q.assign(E * W, acc_t(0));
    const Row& p = row(h);
    for (int64_t e = 0; e < E; ++e) {
      int64_t w0, w1;
      if (!pair_columns(h, e, w0, w1)) continue;
      const Row& q = row(h + args.dy[e]);
      const acc_t* __restrict__ nq = q.norm.data() + args.dx[e];
      pair_weights(p, q, b, h, e, w0, w1, wt);
      pair_dots(p, q, e, w0, w1, s);
      const int64_t n = w1 - w0, at = e * W + w0;  // wt becomes the pair energy (grad_weights reads s)
      pair_coefficients<R, acc_t>(n, s + w0, p.norm.data() + w0, nq + w0, go, eps, wt + w0, c.self_p.data() + at,
                                  c.cross.data() + at, c.self_q.data() + at);
      if (energy) *energy += lane_sum(wt + w0, w1 - w0);
      if (grad_weights) {
        // dE/dw = P for every existing pair, also where w = 0 (learned weights may be zero).
        const uint8_t* pp = p.present.data();
        const uint8_t* pq = q.present.data() + args.dx[e];
        acc_t* out = grad_weights + ((b * E + e) * H + h) * W;
        for (int64_t w = w0; w < w1; ++w)
          out[w] = (pp[w] & pq[w]) ? go * pair_terms<R, acc_t>(s[w], p.norm[w], nq[w], eps).value : acc_t(0);
      }
    }
  }

  void affinity(const View4<acc_t>& out) const {
    at::parallel_for(0, B * H, grain(), [&](int64_t begin, int64_t end) {
      RowRing<Row> rows(reach + 1);
      std::vector<acc_t> wt(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, h = r % H;
        auto row = [&](int64_t hh) -> const Row& {
          return rows.get(b * H + hh, [&](Row& x) { load(x, b, hh); });
        };
        for (int64_t e = 0; e < E; ++e) {
          int64_t w0 = 0, w1 = 0;
          if (pair_columns(h, e, w0, w1)) pair_weights(row(h), row(h + args.dy[e]), b, h, e, w0, w1, wt.data());
          for (int64_t w = 0; w < W; ++w) wt[w] = (w >= w0 && w < w1) ? wt[w] : acc_t(0);
          copy_strided(wt.data(), 1, out.at(b, e, h, 0), out.sw, W);
        }
      }
    });
  }
};

// Per-row outputs of the fused solver gradient, for row r = b * H + h: lam times the Potts energy of the
// pairs that start in it (in T, as the kernel accumulates; zeroed before) and eta H over its unlabeled
// pixels.
template <typename T>
struct SolverRows {
  T* potts;
  double* unary;

  // Image b's energy from its H rows, summed in row order: deterministic for any thread count.
  T energy(int64_t b, int64_t H) const {
    double total = 0;
    for (int64_t h = 0; h < H; ++h) total += static_cast<double>(potts[b * H + h]) + unary[b * H + h];
    return static_cast<T>(total);
  }
};

// The fused solver gradient g = [not seeded] (lam potts_grad + [unlabeled] eta dH/dy) of rows
// first_row .. last_row - 1 of kernel's y into grad (contiguous (B, K, H, W)), with its per-row energies;
// lam holds one value per image.  operand, unlabeled and seeded are contiguous.  The Potts gradient of a
// row comes from backward_rows, the unary is folded in by solver_row (y read from the row cache).
template <int R, int U, typename T>
void solver_gradient_rows(const GridKernel<T>& kernel, const T* lam, const T* operand, const bool* unlabeled,
                          const bool* seeded, T eta, T unary_eps, T* grad, const SolverRows<T>& rows,
                          int64_t first_row, int64_t last_row) {
  const int64_t K = kernel.K, H = kernel.H, W = kernel.W, n = H * W;
  kernel.template backward_rows<R>(
      lam, nullptr, rows.potts, first_row, last_row,
      [&](int64_t b, int64_t h, const T* acc, const typename GridKernel<T>::Row& own) {
        thread_local std::vector<T> scratch;
        scratch.resize(4 * W);
        const int64_t first = b * K * n + h * W, pixels = b * n + h * W;
        // y from the row cache (masked pixels zeroed: they are neither unlabeled nor pulled by pairs)
        rows.unary[b * H + h] = solver_row<U, T>(K, W, {own.labels.data(), W}, {operand + first, n}, {acc, W},
                                                 unlabeled + pixels, seeded + pixels, eta, T(1), unary_eps,
                                                 {grad + first, n}, scratch.data());
      });
}

}  // namespace pottsops
