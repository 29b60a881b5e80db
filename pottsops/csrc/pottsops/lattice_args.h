// Host-side checks of the bilateral filter op, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "pottsops/lattice.h"

namespace pottsops {

// Scaled features beyond this magnitude would overflow the lattice's int32 coordinates (about (d+1)|f|).
constexpr double kMaxLatticeFeature = 1 << 24;
// Pixels per image, so that every vertex index (at most lattice_vertex_budget) fits in int32.
constexpr int64_t kMaxLatticePixels = int64_t(1) << 24;
// How far blur vertices reach from the splatted ones: a splatted vertex s brings the vertices
// s + sum_{j in T} minus_j for every set T of at most kLatticeReach of the d+1 directions (minus_j: the step to
// the minus neighbour along j), with the links between T and T + {j}.  These are the vertices the blur's
// first half C_d ... C_0 carries s's value to (it moves values one minus step per direction, each direction
// once); the second half C^T brings values back along the same links to the splatted vertices, which are
// all the slice reads.  Four steps keep at least what two rings of all neighbours kept, with fewer vertices
// (tests/test_dense.py's smooth image at 1 / 2 / 3 / 4 channels: 0.97 / 0.94 / 0.89 / 0.80 of the exact sum
// with 1 / 8 / 43 / 163 vertices per pixel; the rings: 0.97 / 0.94 / 0.89 / 0.78 with 1.4 / 13 / 65 / 204);
// for grey images (d = 3, four directions) they are every set, the whole blur.
constexpr int kLatticeReach = 4;
// Sets T of at most kLatticeReach of kMaxLatticeDim + 1 directions: 1 + 7 + 21 + 35 + 35.
constexpr int kMaxLatticeSubsets = 99;

// The most vertices a lattice of n points in d dimensions may hold with its blur vertices: 16 per simplex
// entry, and at least 2^18 (small images keep theirs).  The usual bandwidths need far fewer (CamVid at
// sigma_xy 100, sigma_rgb 15: 0.3 per pixel at 512^2, 2 at 64^2); sparse points need more (RGB noise at 1, 1:
// about 40 per splatted vertex, each pixel its own), and without the blur vertices the lattice returns a
// fraction of the exact sum, so lattice_build refuses such features rather than leave them out.  At most
// 2^30, so that vertex indices stay int32.
inline int64_t lattice_vertex_budget(int64_t n, int d) {
  return std::min<int64_t>(std::max<int64_t>(16 * n * (d + 1), int64_t(1) << 18), int64_t(1) << 30);
}

// The values the simplex search reads: finite, and within kMaxLatticeFeature (a NaN or a huge coordinate
// would make its float-to-int conversions undefined).  features: float64 on the host or the device.
inline void check_lattice_feature_values(const at::Tensor& features) {
  if (features.numel() == 0) return;
  const double largest = features.abs().max().item<double>();  // NaN if any is NaN
  TORCH_CHECK(std::isfinite(largest), "features: expected finite values, got NaN or Inf");
  TORCH_CHECK(largest <= kMaxLatticeFeature, "features: expected magnitudes at most 2^24 (positions / sigma_xy, "
              "colours / sigma_rgb: a sigma too small for the image), got ", largest);
}

// The lattice of a batch on the CPU, as lattice_build returns it (csrc/cpu/lattice.cpp): image b's
// vertices are rows vertex_offsets[b] .. vertex_offsets[b + 1] of neighbors, and its indices count from
// its first vertex.
struct CpuLattice {
  at::Tensor entry_vertex;    // (B, n, d+1) int32: the vertices of each pixel's simplex
  at::Tensor entry_weight;    // (B, n, d+1) float32 or float64: their barycentric weights
  at::Tensor neighbors;       // (M, d+1, 2) int32: minus and plus neighbour along each direction, -1 if absent
  at::Tensor vertex_offsets;  // (B + 1,) int64
};

// The lattice tensors, checked against values (B, C, H, W) and against each other: every index they hold
// lies inside its image's vertices, so that a filter never reads outside them.
inline CpuLattice make_cpu_lattice(const at::Tensor& values, at::TensorList lattice) {
  TORCH_CHECK(values.dim() == 4, "values: expected (B, C, H, W), got shape ", values.sizes());
  TORCH_CHECK(at::isFloatingType(values.scalar_type()), "values: expected a floating dtype, got ",
              values.scalar_type());
  TORCH_CHECK(lattice.size() == 4, "lattice: expected the 4 tensors lattice_build returns on the CPU, got ",
              lattice.size());
  for (const at::Tensor& t : lattice) {
    TORCH_CHECK(t.device() == values.device(), "lattice: expected tensors on ", values.device(), ", got ", t.device());
  }
  const int64_t B = values.size(0), n = values.size(2) * values.size(3);
  TORCH_CHECK(n <= kMaxLatticePixels, "values: at most ", kMaxLatticePixels, " pixels per image for the lattice, got ",
              n);
  CpuLattice parts{lattice[0].contiguous(), lattice[1].contiguous(), lattice[2].contiguous(), lattice[3].contiguous()};
  const at::Tensor& vertex = parts.entry_vertex;
  TORCH_CHECK(vertex.dim() == 3 && vertex.size(0) == B && vertex.size(1) == n && vertex.size(2) >= 2 &&
                  vertex.size(2) <= kMaxLatticeDim + 1 && vertex.scalar_type() == at::kInt,
              "lattice[0]: expected int32 entry vertices (", B, ", ", n, ", d+1) for values of shape ", values.sizes(),
              ", got ", vertex.scalar_type(), " of shape ", vertex.sizes());
  const int64_t stride = vertex.size(2);
  TORCH_CHECK(parts.entry_weight.sizes() == vertex.sizes() &&
                  (parts.entry_weight.scalar_type() == at::kFloat || parts.entry_weight.scalar_type() == at::kDouble),
              "lattice[1]: expected float32 or float64 entry weights of shape ", vertex.sizes(), ", got ",
              parts.entry_weight.scalar_type(), " of shape ", parts.entry_weight.sizes());
  const at::Tensor& neighbors = parts.neighbors;
  TORCH_CHECK(neighbors.dim() == 3 && neighbors.size(1) == stride && neighbors.size(2) == 2 &&
                  neighbors.scalar_type() == at::kInt,
              "lattice[2]: expected an int32 neighbour table (M, ", stride, ", 2), got ", neighbors.scalar_type(),
              " of shape ", neighbors.sizes());
  const at::Tensor& offsets = parts.vertex_offsets;
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == B + 1 && offsets.scalar_type() == at::kLong,
              "lattice[3]: expected int64 vertex offsets (", B + 1, ",), got ", offsets.scalar_type(), " of shape ",
              offsets.sizes());
  const int64_t* offset = offsets.data_ptr<int64_t>();
  bool ordered = offset[0] == 0 && offset[B] == neighbors.size(0);
  for (int64_t b = 0; b < B && ordered; ++b) ordered = offset[b] <= offset[b + 1];
  TORCH_CHECK(ordered, "lattice[3]: expected non-decreasing vertex offsets from 0 to ", neighbors.size(0),
              " (the neighbour table's rows)");
  std::vector<char> inside(B, 1);
  const int32_t* entries = vertex.data_ptr<int32_t>();
  const int32_t* table = neighbors.data_ptr<int32_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t m = offset[b + 1] - offset[b];
      bool ok = true;
      for (int64_t e = b * n * stride; e < (b + 1) * n * stride; ++e) ok &= entries[e] >= 0 && entries[e] < m;
      for (int64_t e = offset[b] * stride * 2; e < offset[b + 1] * stride * 2; ++e) ok &= table[e] >= -1 && table[e] < m;
      inside[b] = ok;
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(inside[b], "lattice: image ", b, " holds a vertex index outside its ", offset[b + 1] - offset[b],
                " vertices (the tensors were not made by lattice_build for these values)");
  }
  return parts;
}

// alpha such that alpha * S^T C^T C S approximates sum_j exp(-|f_i - f_j|^2 / 2) v_j: the lattice's blur
// has unit mass and approximates a unit Gaussian *density*, whose peak is (2 pi)^(-d/2); a splatted
// value is spread over one lattice cell, of volume 1 / rho in feature units, with lattice density
// rho = (2/3)^(d/2) sqrt(d+1) for the scaling of lattice_feature_scale.
inline double lattice_scale(int d) {
  return std::pow(4.0 * M_PI / 3.0, d / 2.0) * std::sqrt(d + 1.0);
}

}  // namespace pottsops

namespace pottsops {

inline void check_lattice_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 4, "features: expected (B, d, H, W), got shape ", features.sizes());
  TORCH_CHECK(features.size(1) >= 1 && features.size(1) <= kMaxLatticeDim, "features: expected 1 to ",
              kMaxLatticeDim, " features per pixel, got ", features.size(1));
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble,
              "features: expected float32 or float64 (positions need more than 16 bits), got ", features.scalar_type());
  TORCH_CHECK(features.size(2) * features.size(3) <= kMaxLatticePixels, "features: at most ", kMaxLatticePixels,
              " pixels per image for the lattice, got ", features.size(2) * features.size(3));
}

inline void check_segments(const at::Tensor& rows, const at::Tensor& offsets) {
  TORCH_CHECK(rows.dim() == 2 && at::isFloatingType(rows.scalar_type()), "rows: expected a floating (R, C) tensor, got ",
              rows.scalar_type(), " of shape ", rows.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1 && offsets.scalar_type() == at::kLong,
              "offsets: expected an int64 (S + 1,) tensor, got ", offsets.scalar_type(), " of shape ", offsets.sizes());
  TORCH_CHECK(offsets.device() == rows.device(), "offsets: expected device ", rows.device(), ", got ", offsets.device());
  // Segments read rows[offsets[s]:offsets[s+1]]: the bounds must be ordered and inside the rows.
  TORCH_CHECK(offsets.min().item<int64_t>() >= 0 && offsets.max().item<int64_t>() <= rows.size(0) &&
                  (offsets.size(0) < 2 || (offsets.diff() >= 0).all().item<bool>()),
              "offsets: expected non-decreasing bounds in [0, ", rows.size(0), "] (the rows)");
}

}  // namespace pottsops
