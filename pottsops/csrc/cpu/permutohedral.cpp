// Bilateral (Gaussian) filtering with the permutohedral lattice on the CPU: all C channels of an image in
// one pass (splat, blur, slice), images of a batch in parallel.
//
// The operator is A = alpha S^T C^T C S: S splats pixels onto lattice vertices with barycentric weights,
// C = C_d ... C_0 with C_j the two-tap average along direction j, so that C_j^T C_j is the classic
// [1/4, 1/2, 1/4] blur.  Written this way A is exactly symmetric (positive semi-definite), which the Potts
// gradients rely on, at the cost of the same number of taps as the one-sided [1 2 1] blur.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "pottsops/bilateral_args.h"
#include "pottsops/grid_args.h"  // accumulation_type
#include "pottsops/permutohedral.h"

namespace pottsops {
namespace {

// The lattice of one image: vertex keys, each pixel's d+1 (vertex, weight) entries and each vertex's
// neighbours along the d+1 directions.  Rings of blur vertices are added around the splatted ones while
// the lattice stays within lattice_vertex_budget (a ring that would pass it is left out whole), so that
// memory stays bounded where the points are sparse (small sigmas); the hash table grows as needed.
class Lattice {
 public:
  Lattice(const double* features, int64_t n, int d) : d_(d), n_(n) {
    rehash(1024);
    entry_vertex_.resize(n * (d + 1));
    entry_weight_.resize(n * (d + 1));
    std::vector<int32_t> keys((d + 1) * d);
    std::vector<double> weights(d + 1);
    for (int64_t i = 0; i < n; ++i) {
      enclosing_simplex([&](int f) { return features[f * n + i]; }, d, keys.data(), weights.data());
      for (int r = 0; r <= d; ++r) {
        entry_vertex_[i * (d + 1) + r] = find(&keys[r * d], true);
        entry_weight_[i * (d + 1) + r] = weights[r];
      }
    }
    std::vector<int32_t> key(d);
    const int64_t budget = lattice_vertex_budget(n, d);
    for (int ring = 0; ring < kLatticeRings; ++ring) {
      const int64_t occupied = num_vertices();
      for (int64_t v = 0; v < occupied && num_vertices() <= budget; ++v) {
        for (int j = 0; j <= d; ++j) {
          for (int plus = 0; plus < 2; ++plus) {
            lattice_neighbor(&keys_[v * d], d, j, plus, key.data());
            find(key.data(), true);
          }
        }
      }
      if (num_vertices() > budget) {  // this ring is left out: back to the vertices before it
        keys_.resize(occupied * d);
        rehash(table_.size());
        break;
      }
    }
    const int64_t m = num_vertices();
    neighbors_.resize(m * (d + 1) * 2);
    for (int64_t v = 0; v < m; ++v) {
      for (int j = 0; j <= d; ++j) {
        for (int plus = 0; plus < 2; ++plus) {
          lattice_neighbor(&keys_[v * d], d, j, plus, key.data());
          neighbors_[(v * (d + 1) + j) * 2 + plus] = find(key.data(), false);
        }
      }
    }
  }

  int64_t num_vertices() const { return static_cast<int64_t>(keys_.size()) / d_; }

  // out (C, n) = alpha A values (C, n); values and out are plane-major with the given strides.
  template <typename acc_t, typename scalar_t>
  void filter(const scalar_t* values, int64_t value_channel_stride, int64_t value_pixel_stride, int64_t channels,
              double alpha, scalar_t* out, int64_t out_channel_stride, int64_t out_pixel_stride) const {
    const int64_t m = num_vertices(), C = channels, stride = d_ + 1;
    std::vector<acc_t> lattice(m * C, acc_t(0)), next(m * C);
    for (int64_t i = 0; i < n_; ++i) {
      for (int r = 0; r <= d_; ++r) {
        const acc_t w = static_cast<acc_t>(entry_weight_[i * stride + r]);
        acc_t* dst = &lattice[entry_vertex_[i * stride + r] * C];
        for (int64_t c = 0; c < C; ++c) dst[c] += w * static_cast<acc_t>(values[c * value_channel_stride + i * value_pixel_stride]);
      }
    }
    // C_0 .. C_d (towards the plus neighbour), then C_d^T .. C_0^T (towards the minus neighbour).
    for (int pass = 0; pass < 2 * stride; ++pass) {
      const int j = pass < stride ? pass : 2 * stride - 1 - pass;
      const int plus = pass < stride ? 1 : 0;
      for (int64_t v = 0; v < m; ++v) {
        const int32_t u = neighbors_[(v * stride + j) * 2 + plus];
        const acc_t* here = &lattice[v * C];
        acc_t* dst = &next[v * C];
        if (u < 0) {
          for (int64_t c = 0; c < C; ++c) dst[c] = acc_t(0.5) * here[c];
        } else {
          const acc_t* there = &lattice[u * C];
          for (int64_t c = 0; c < C; ++c) dst[c] = acc_t(0.5) * (here[c] + there[c]);
        }
      }
      lattice.swap(next);
    }
    std::vector<acc_t> sum(C);
    for (int64_t i = 0; i < n_; ++i) {
      for (int64_t c = 0; c < C; ++c) sum[c] = 0;
      for (int r = 0; r <= d_; ++r) {
        const acc_t w = static_cast<acc_t>(entry_weight_[i * stride + r]);
        const acc_t* src = &lattice[entry_vertex_[i * stride + r] * C];
        for (int64_t c = 0; c < C; ++c) sum[c] += w * src[c];
      }
      for (int64_t c = 0; c < C; ++c) {
        out[c * out_channel_stride + i * out_pixel_stride] = narrow<scalar_t>(static_cast<acc_t>(alpha) * sum[c]);
      }
    }
  }

 private:
  // Index of the vertex with this key; inserted if absent and insert is true, else -1.  The table is kept
  // at most half full, so a probe always ends at an empty slot.
  int32_t find(const int32_t* key, bool insert) {
    const uint64_t mask = table_.size() - 1;
    for (uint64_t slot = lattice_hash(key, d_) & mask;; slot = (slot + 1) & mask) {
      const int32_t v = table_[slot];
      if (v < 0) {
        if (!insert) return -1;
        const int32_t index = static_cast<int32_t>(num_vertices());
        keys_.insert(keys_.end(), key, key + d_);
        table_[slot] = index;
        if (2 * num_vertices() > static_cast<int64_t>(table_.size())) rehash(2 * table_.size());
        return index;
      }
      if (std::equal(key, key + d_, &keys_[v * static_cast<int64_t>(d_)])) return v;
    }
  }

  // A table of `capacity` slots (a power of two) holding every vertex.
  void rehash(size_t capacity) {
    table_.assign(capacity, -1);
    const uint64_t mask = capacity - 1;
    for (int64_t v = 0; v < num_vertices(); ++v) {
      uint64_t slot = lattice_hash(&keys_[v * d_], d_) & mask;
      while (table_[slot] >= 0) slot = (slot + 1) & mask;
      table_[slot] = static_cast<int32_t>(v);
    }
  }

  int d_;
  int64_t n_;
  std::vector<int32_t> table_;
  std::vector<int32_t> keys_;
  std::vector<int32_t> entry_vertex_;
  std::vector<double> entry_weight_;
  std::vector<int32_t> neighbors_;
};

at::Tensor bilateral_filter_cpu(const at::Tensor& values, const at::Tensor& features) {
  const BilateralArgs args = make_bilateral_args(values, features);
  at::Tensor out = at::empty(values.sizes(), values.options());
  const int64_t B = values.size(0), C = values.size(1), n = values.size(2) * values.size(3);
  const int d = static_cast<int>(features.size(1));
  // Features as contiguous double (B, d, n): the simplex search needs more than float's 24 bits where
  // coordinates are large (small sigmas on large images).
  const at::Tensor positions = features.to(at::kDouble).contiguous();
  check_lattice_feature_values(positions);
  const double alpha = lattice_scale(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "bilateral_filter_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor flat = values.reshape({B, C, n});
    const scalar_t* src = flat.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const double* pos = positions.data_ptr<double>();
    // One image per task: the lattice of an image is built sequentially (hash insertions).
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const Lattice lattice(pos + b * d * n, n, d);
        lattice.filter<acc_t>(src + b * flat.stride(0), flat.stride(1), flat.stride(2), C, alpha, dst + b * C * n, n,
                              1);
      }
    });
  });
  return out;
}


std::tuple<at::Tensor, at::Tensor> lattice_simplex_cpu(const at::Tensor& features) {
  check_lattice_features(features);
  const int64_t B = features.size(0), d = features.size(1), n = features.size(2) * features.size(3);
  const at::Tensor f = features.to(at::kDouble).reshape({B, d, n}).contiguous();
  check_lattice_feature_values(f);
  at::Tensor keys = at::empty({B, n, d + 1, d}, features.options().dtype(at::kInt));
  at::Tensor weights = at::empty({B, n, d + 1}, features.options().dtype(accumulation_type(features.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "lattice_simplex_cpu", [&] {
    const double* src = f.data_ptr<double>();
    int32_t* key = keys.data_ptr<int32_t>();
    scalar_t* weight = weights.data_ptr<scalar_t>();
    at::parallel_for(0, B * n, 1024, [&](int64_t begin, int64_t end) {
      double w[kMaxLatticeDim + 1];
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / n, i = p % n;
        enclosing_simplex([&](int k) { return src[(b * d + k) * n + i]; }, static_cast<int>(d), key + p * (d + 1) * d,
                          w);
        for (int64_t r = 0; r <= d; ++r) weight[p * (d + 1) + r] = static_cast<scalar_t>(w[r]);
      }
    });
  });
  return {keys, weights};
}

at::Tensor segment_sum_cpu(const at::Tensor& rows, const at::Tensor& offsets) {
  check_segments(rows, offsets);
  const at::Tensor src = rows.contiguous();
  const at::Tensor bounds = offsets.contiguous();
  const int64_t S = offsets.size(0) - 1, C = rows.size(1);
  at::Tensor out = at::zeros({S, C}, rows.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "segment_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = src.data_ptr<scalar_t>();
    const int64_t* o = bounds.data_ptr<int64_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, S, 256, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sum(C);
      for (int64_t s = begin; s < end; ++s) {
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (int64_t r = o[s]; r < o[s + 1]; ++r)
          for (int64_t c = 0; c < C; ++c) sum[c] += static_cast<acc_t>(x[r * C + c]);
        for (int64_t c = 0; c < C; ++c) y[s * C + c] = static_cast<scalar_t>(sum[c]);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CPU, m) {
  m.impl("bilateral_filter", &bilateral_filter_cpu);
  m.impl("lattice_simplex", &lattice_simplex_cpu);
  m.impl("segment_sum", &segment_sum_cpu);
}

}  // namespace pottsops
