// Bilateral (Gaussian) filtering with the permutohedral lattice on the CPU.  lattice_build builds each
// image's lattice once; lattice_filter filters any number of value tensors with it, all C channels of an
// image in one pass (splat, blur, slice), images of a batch in parallel.
//
// The operator is A = alpha S^T C^T C S: S splats pixels onto lattice vertices with barycentric weights,
// C = C_d ... C_0 with C_j the two-tap average along direction j, so that C_j^T C_j is the classic
// [1/4, 1/2, 1/4] blur.  Written this way A is exactly symmetric (positive semi-definite), which the Potts
// gradients rely on, at the cost of the same number of taps as the one-sided [1 2 1] blur.
//
// Where the time goes: for a few dozen channels, building the lattice (a hash table filled pixel by pixel)
// costs about as much as filtering.  Neighbouring pixels mostly fall into the same simplex (CamVid at
// 512^2, sigma_xy 100, sigma_rgb 15: 262k pixels, 6.8k vertices; 61 % of a pixel's vertices are its
// predecessor's, at the same index r), so those are taken without hashing; the blur vertices are made from
// each splatted vertex by fixed key offsets (lattice_args.h kLatticeReach), and their links are known from
// how the offsets relate, so the neighbour table needs no lookups of its own.  Splat
// and slice go through tiles of pixel-major rows padded to whole vectors, so that the channel loops
// vectorise.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "pottsops/lattice_args.h"
#include "pottsops/tensor_views.h"  // accumulation_type, narrow
#include "pottsops/lattice.h"

namespace pottsops {
namespace {

// The sets T of at most kLatticeReach of the d+1 directions, by size (the empty set first): each set's key
// offset sum_{j in T} minus_j and, for each direction j not in T, the index of T + {j} (-1 where that set
// is larger than kLatticeReach or j is in T).
struct LatticeSubsets {
  int count = 0;
  int32_t offset[kMaxLatticeSubsets][kMaxLatticeDim];
  int8_t extend[kMaxLatticeSubsets][kMaxLatticeDim + 1];

  explicit LatticeSubsets(int d) {
    int32_t masks[kMaxLatticeSubsets];
    for (int size = 0; size <= std::min(kLatticeReach, d + 1); ++size) {
      for (int32_t mask = 0; mask < (1 << (d + 1)); ++mask) {
        if (__builtin_popcount(mask) == size) masks[count++] = mask;
      }
    }
    for (int s = 0; s < count; ++s) {
      for (int i = 0; i < d; ++i) offset[s][i] = 0;
      for (int j = 0; j <= d; ++j) {
        extend[s][j] = -1;
        if (!(masks[s] >> j & 1)) continue;
        for (int i = 0; i < d; ++i) offset[s][i] += i == j ? d : -1;  // the minus step along j
      }
      for (int t = 0; t < count; ++t) {
        const int32_t added = masks[t] & ~masks[s];
        if ((masks[t] & masks[s]) == masks[s] && __builtin_popcount(added) == 1) extend[s][__builtin_ctz(added)] = t;
      }
    }
  }
};

// The lattice of one image: each pixel's d+1 (vertex, weight) entries, written where the caller says, and
// each vertex's neighbours along the d+1 directions.  The splatted vertices come first, then each one's blur
// vertices (lattice_args.h kLatticeReach) with their links; where they would pass lattice_vertex_budget
// (sparse points: small sigmas, noisy colours) the build stops there, so that memory stays bounded, and the
// op refuses the features.  The hash table grows as needed.
class LatticeBuilder {
 public:
  template <typename feature_t, typename weight_t>
  LatticeBuilder(const feature_t* features, int64_t n, int d, int32_t* entry_vertex, weight_t* entry_weight)
      : d_(d) {
    // A power of two: room for half as many vertices as pixels, about what a small image needs (CamVid at
    // 64^2, sigma_xy 100, sigma_rgb 15: 2.3 vertices per pixel; at 512^2 0.1), a few rehashes where more come.
    size_t capacity = 1024;
    while (capacity < static_cast<size_t>(n)) capacity *= 2;
    rehash(capacity);
    const int stride = d + 1;
    int32_t rem0[kMaxLatticeDim + 1], rank[kMaxLatticeDim + 1], key[kMaxLatticeDim];
    int32_t last_keys[(kMaxLatticeDim + 1) * kMaxLatticeDim];  // the previous pixel's, vertex r at r * d
    double weights[kMaxLatticeDim + 1], scale[kMaxLatticeDim];
    lattice_feature_scales(d, scale);
    for (int64_t i = 0; i < n; ++i) {
      // The simplex search converts to int: a NaN or a huge coordinate would be undefined behaviour.
      for (int f = 0; f < d; ++f) valid_ &= std::abs(static_cast<double>(features[f * n + i])) <= kMaxLatticeFeature;
      if (!valid_) return;
      enclosing_simplex([&](int f) { return static_cast<double>(features[f * n + i]); }, d, scale, rem0, rank,
                        weights);
      int32_t* vertices = entry_vertex + i * stride;
      for (int r = 0; r <= d; ++r) {
        simplex_vertex(rem0, rank, d, r, key);
        int32_t* last = last_keys + r * d;
        if (i > 0 && same_key(key, last)) {
          vertices[r] = vertices[r - stride];  // shared with the previous pixel's simplex, at the same r
        } else {
          vertices[r] = find(key);
          std::copy(key, key + d, last);
        }
        entry_weight[i * stride + r] = static_cast<weight_t>(weights[r]);
      }
    }
    // Each splatted vertex's blur vertices, and the links between them.  Where they would pass the budget
    // the build stops (the lattice is then refused: see lattice_vertex_budget), so that memory never grows
    // past it.
    const int64_t budget = lattice_vertex_budget(n, d), splatted = num_vertices();
    const LatticeSubsets subsets(d);
    int32_t index[kMaxLatticeSubsets];
    for (int64_t v = 0; v < splatted; ++v) {
      int32_t base[kMaxLatticeDim];
      std::copy(&keys_[v * d], &keys_[v * d] + d, base);  // keys_ may move as vertices are added
      index[0] = static_cast<int32_t>(v);
      for (int s = 1; s < subsets.count; ++s) {
        for (int f = 0; f < d; ++f) key[f] = base[f] + subsets.offset[s][f];
        index[s] = find(key);
      }
      if (num_vertices() > budget) {
        within_budget_ = false;
        return;
      }
      for (int s = 0; s < subsets.count; ++s) {
        for (int j = 0; j <= d; ++j) {
          const int t = subsets.extend[s][j];
          if (t < 0) continue;
          neighbors_[(static_cast<int64_t>(index[s]) * stride + j) * 2] = index[t];       // its minus neighbour
          neighbors_[(static_cast<int64_t>(index[t]) * stride + j) * 2 + 1] = index[s];   // and back: plus
        }
      }
    }
  }

  int64_t num_vertices() const { return static_cast<int64_t>(keys_.size()) / d_; }
  std::vector<int32_t> take_neighbors() { return std::move(neighbors_); }  // (vertices, d+1, 2), once
  // False if a feature was not finite or beyond kMaxLatticeFeature (the lattice is then left unfinished).
  bool valid() const { return valid_; }
  // False if the blur vertices would pass lattice_vertex_budget (the lattice is then left unfinished).
  bool within_budget() const { return within_budget_; }

 private:
  struct Slot {
    int32_t vertex;  // -1: empty
    uint32_t tag;    // high bits of the key's hash: most mismatches are rejected without reading the key
  };

  // Index of the vertex with this key, inserted (without neighbours) if absent.  The table is kept at most
  // half full, so a probe always ends at an empty slot.
  int32_t find(const int32_t* key) {
    const uint64_t hash = lattice_hash(key, d_), mask = table_.size() - 1;
    const uint32_t tag = static_cast<uint32_t>(hash >> 32);
    for (uint64_t slot = hash & mask;; slot = (slot + 1) & mask) {
      const Slot entry = table_[slot];
      if (entry.vertex < 0) {
        const int32_t index = static_cast<int32_t>(num_vertices());
        keys_.insert(keys_.end(), key, key + d_);
        neighbors_.resize(neighbors_.size() + 2 * (d_ + 1), -1);
        table_[slot] = {index, tag};
        if (2 * num_vertices() > static_cast<int64_t>(table_.size())) rehash(2 * table_.size());
        return index;
      }
      if (entry.tag == tag && same_key(key, &keys_[entry.vertex * static_cast<int64_t>(d_)])) return entry.vertex;
    }
  }

  bool same_key(const int32_t* a, const int32_t* b) const {  // not std::equal: a memcmp call per key
    bool same = true;
    for (int i = 0; i < d_; ++i) same &= a[i] == b[i];
    return same;
  }

  // A table of `capacity` slots (a power of two) holding every vertex.
  void rehash(size_t capacity) {
    table_.assign(capacity, Slot{-1, 0});
    const uint64_t mask = capacity - 1;
    for (int64_t v = 0; v < num_vertices(); ++v) {
      const uint64_t hash = lattice_hash(&keys_[v * d_], d_);
      uint64_t slot = hash & mask;
      while (table_[slot].vertex >= 0) slot = (slot + 1) & mask;
      table_[slot] = {static_cast<int32_t>(v), static_cast<uint32_t>(hash >> 32)};
    }
  }

  int d_;
  bool valid_ = true;
  bool within_budget_ = true;
  std::vector<Slot> table_;
  std::vector<int32_t> keys_;       // (vertices, d)
  std::vector<int32_t> neighbors_;  // (vertices, d+1, 2), -1 where absent
};

// One image's lattice as lattice_filter reads it.
template <typename weight_t>
struct ImageLattice {
  int d;
  int64_t n, m;                  // pixels, vertices
  const int32_t* entry_vertex;   // (n, d+1)
  const weight_t* entry_weight;  // (n, d+1)
  const int32_t* neighbors;      // (m, d+1, 2)
};

constexpr int64_t kTile = 64;  // pixels whose rows splat and slice go through at once
constexpr int64_t kLanes = 8;  // rows are padded to a multiple of this, so that every channel loop is whole vectors

// row[0 .. width) += w * src[0 .. width), width a multiple of kLanes.
template <typename acc_t>
inline void add_scaled(acc_t* __restrict__ row, acc_t w, const acc_t* __restrict__ src, int64_t width) {
  for (int64_t c = 0; c < width; c += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) row[c + k] += w * src[c + k];
  }
}

// out (C, n) contiguous = alpha A values, values (C, n) with the given strides; if forms is not null, also
// forms[c] = values_c . (alpha A values_c) = alpha |C S values_c|^2, read off the grid halfway through the
// blur, where it holds C S values (A = alpha S^T C^T C S).
template <typename scalar_t, typename weight_t, typename form_t>
void filter_image(const ImageLattice<weight_t>& lattice, const scalar_t* values, int64_t channel_stride,
                  int64_t pixel_stride, int64_t C, double alpha, scalar_t* out, form_t* forms) {
  using acc_t = at::opmath_type<scalar_t>;
  const int stride = lattice.d + 1;
  const int64_t width = (C + kLanes - 1) / kLanes * kLanes;
  std::vector<acc_t> grid(lattice.m * width, acc_t(0)), next(lattice.m * width), tile(kTile * width, acc_t(0));
  for (int64_t start = 0; start < lattice.n; start += kTile) {
    const int64_t count = std::min(kTile, lattice.n - start);
    for (int64_t c = 0; c < C; ++c) {
      const scalar_t* src = values + c * channel_stride + start * pixel_stride;
      for (int64_t p = 0; p < count; ++p) tile[p * width + c] = static_cast<acc_t>(src[p * pixel_stride]);
    }
    for (int64_t p = 0; p < count; ++p) {
      for (int r = 0; r < stride; ++r) {
        const int64_t entry = (start + p) * stride + r;
        add_scaled(&grid[lattice.entry_vertex[entry] * width], static_cast<acc_t>(lattice.entry_weight[entry]),
                   &tile[p * width], width);
      }
    }
  }
  // C_0 .. C_d (towards the plus neighbour), then C_d^T .. C_0^T (towards the minus neighbour).
  for (int pass = 0; pass < 2 * stride; ++pass) {
    const int j = pass < stride ? pass : 2 * stride - 1 - pass;
    const int plus = pass < stride ? 1 : 0;
    for (int64_t v = 0; v < lattice.m; ++v) {
      const int32_t u = lattice.neighbors[(v * stride + j) * 2 + plus];
      const acc_t* here = &grid[v * width];
      acc_t* dst = &next[v * width];
      if (u < 0) {
        for (int64_t c = 0; c < width; ++c) dst[c] = acc_t(0.5) * here[c];
      } else {
        const acc_t* there = &grid[u * width];
        for (int64_t c = 0; c < width; ++c) dst[c] = acc_t(0.5) * (here[c] + there[c]);
      }
    }
    grid.swap(next);
    if (forms != nullptr && pass == stride - 1) {
      std::vector<form_t> sum(width, form_t(0));
      for (int64_t v = 0; v < lattice.m; ++v) {
        for (int64_t c = 0; c < width; ++c) sum[c] += static_cast<form_t>(grid[v * width + c]) * grid[v * width + c];
      }
      for (int64_t c = 0; c < C; ++c) forms[c] = static_cast<form_t>(alpha) * sum[c];
    }
  }
  const acc_t scale = static_cast<acc_t>(alpha);
  for (int64_t start = 0; start < lattice.n; start += kTile) {
    const int64_t count = std::min(kTile, lattice.n - start);
    std::fill(tile.begin(), tile.begin() + count * width, acc_t(0));
    for (int64_t p = 0; p < count; ++p) {
      for (int r = 0; r < stride; ++r) {
        const int64_t entry = (start + p) * stride + r;
        add_scaled(&tile[p * width], static_cast<acc_t>(lattice.entry_weight[entry]),
                   &grid[lattice.entry_vertex[entry] * width], width);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      scalar_t* dst = out + c * lattice.n + start;
      for (int64_t p = 0; p < count; ++p) dst[p] = narrow<scalar_t>(scale * tile[p * width + c]);
    }
  }
}

std::vector<at::Tensor> lattice_build_cpu(const at::Tensor& features) {
  check_lattice_features(features);
  const int64_t B = features.size(0), n = features.size(2) * features.size(3);
  const int d = static_cast<int>(features.size(1));
  const at::Tensor positions = features.reshape({B, d, n}).contiguous();
  const auto weight_type = accumulation_type(features.scalar_type());
  at::Tensor entry_vertex = at::empty({B, n, d + 1}, features.options().dtype(at::kInt));
  at::Tensor entry_weight = at::empty({B, n, d + 1}, features.options().dtype(weight_type));
  std::vector<std::vector<int32_t>> neighbors(B);
  std::vector<char> valid(B, 1), within_budget(B, 1);
  // Features float32 or float64 (the simplex search is in double: float's 24 bits are not enough where
  // coordinates are large), weights the same.
  AT_DISPATCH_FLOATING_TYPES(weight_type, "lattice_build_cpu", [&] {
    const scalar_t* pos = positions.data_ptr<scalar_t>();
    int32_t* vertex = entry_vertex.data_ptr<int32_t>();
    scalar_t* weight = entry_weight.data_ptr<scalar_t>();
    // One image per task: a lattice is built sequentially (hash insertions).
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        LatticeBuilder built(pos + b * d * n, n, d, vertex + b * n * (d + 1), weight + b * n * (d + 1));
        valid[b] = built.valid();
        within_budget[b] = built.within_budget();
        neighbors[b] = built.take_neighbors();
      }
    });
  });
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(valid[b], "features: expected finite values of magnitude at most 2^24 (positions / sigma_xy, colours "
                "/ sigma_rgb: a sigma too small for the image), got others in image ", b);
    TORCH_CHECK(within_budget[b], "features: image ", b, "'s points are too sparse for the lattice: its blur "
                "vertices would take more than ", lattice_vertex_budget(n, d), " (", n, " pixels, ", d, " features), "
                "and without them it returns a fraction of the exact sum (sigma_xy or sigma_rgb too small for the "
                "image, or noisy colours: use larger sigmas, fewer channels, or the exact method on small images)");
  }
  at::Tensor offsets = at::empty({B + 1}, features.options().dtype(at::kLong));
  int64_t* offset = offsets.data_ptr<int64_t>();
  offset[0] = 0;
  for (int64_t b = 0; b < B; ++b) offset[b + 1] = offset[b] + static_cast<int64_t>(neighbors[b].size()) / (2 * (d + 1));
  at::Tensor table = at::empty({offset[B], d + 1, 2}, features.options().dtype(at::kInt));
  for (int64_t b = 0; b < B; ++b) {
    std::copy(neighbors[b].begin(), neighbors[b].end(), table.data_ptr<int32_t>() + offset[b] * 2 * (d + 1));
  }
  return {entry_vertex, entry_weight, table, offsets};
}

// The filter of values with the lattice, and with forms (B, C) if forms is defined.
void filter_batch(const at::Tensor& values, at::TensorList lattice, at::Tensor& out, at::Tensor* forms) {
  const CpuLattice parts = make_cpu_lattice(values, lattice);
  const int64_t B = values.size(0), C = values.size(1), n = values.size(2) * values.size(3);
  const int d = static_cast<int>(parts.entry_vertex.size(2)) - 1;
  out = at::empty(values.sizes(), values.options());
  if (forms != nullptr) *forms = at::empty({B, C}, values.options().dtype(accumulation_type(values.scalar_type())));
  const at::Tensor flat = values.reshape({B, C, n});
  const double alpha = lattice_scale(d);
  const int32_t* vertex = parts.entry_vertex.data_ptr<int32_t>();
  const int32_t* neighbors = parts.neighbors.data_ptr<int32_t>();
  const int64_t* offset = parts.vertex_offsets.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "lattice_filter_cpu", [&] {
    using value_t = scalar_t;
    using form_t = std::conditional_t<std::is_same_v<value_t, double>, double, float>;
    form_t* form = forms != nullptr ? forms->data_ptr<form_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES(parts.entry_weight.scalar_type(), "lattice_filter_cpu_weights", [&] {
      const scalar_t* weight = parts.entry_weight.data_ptr<scalar_t>();
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const ImageLattice<scalar_t> image{d, n, offset[b + 1] - offset[b], vertex + b * n * (d + 1),
                                             weight + b * n * (d + 1), neighbors + offset[b] * 2 * (d + 1)};
          filter_image(image, flat.data_ptr<value_t>() + b * flat.stride(0), flat.stride(1), flat.stride(2), C, alpha,
                       out.data_ptr<value_t>() + b * C * n, form != nullptr ? form + b * C : nullptr);
        }
      });
    });
  });
}

at::Tensor lattice_filter_cpu(const at::Tensor& values, at::TensorList lattice) {
  at::Tensor out;
  filter_batch(values, lattice, out, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> lattice_quadratic_cpu(const at::Tensor& values, at::TensorList lattice) {
  at::Tensor out, forms;
  filter_batch(values, lattice, out, &forms);
  return {out, forms};
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
      double w[kMaxLatticeDim + 1], scale[kMaxLatticeDim];
      lattice_feature_scales(static_cast<int>(d), scale);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / n, i = p % n;
        enclosing_simplex([&](int k) { return src[(b * d + k) * n + i]; }, static_cast<int>(d), scale,
                          key + p * (d + 1) * d, w);
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
  m.impl("lattice_build", &lattice_build_cpu);
  m.impl("lattice_filter", &lattice_filter_cpu);
  m.impl("lattice_quadratic", &lattice_quadratic_cpu);
  m.impl("lattice_simplex", &lattice_simplex_cpu);
  m.impl("segment_sum", &segment_sum_cpu);
}

}  // namespace pottsops
