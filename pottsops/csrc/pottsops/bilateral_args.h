// Host-side checks of the bilateral filter op, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "pottsops/permutohedral.h"

namespace pottsops {

// Scaled features beyond this magnitude would overflow the lattice's int32 coordinates (about (d+1)|f|).
constexpr double kMaxLatticeFeature = 1 << 24;
// Pixels per image, so that every vertex index (at most lattice_vertex_budget) fits in int32.
constexpr int64_t kMaxLatticePixels = int64_t(1) << 24;
constexpr int kLatticeRings = 2;

// The most vertices a lattice of n points in d dimensions holds before its blur rings are left out: 16
// per simplex entry, and at least 2^18 (small images keep their rings).  The usual bandwidths need far
// fewer (CamVid at sigma_xy 100, sigma_rgb 15: 0.5 per pixel with both rings; at 5, 15: 9.5); at 1, 1
// the second ring would take 206 per pixel (a ring around each isolated point), and is left out.
// At most 2^30, so that vertex indices stay int32.
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

struct BilateralArgs {
  at::Tensor values;    // (B, C, H, W) floating
  at::Tensor features;  // (B, d, H, W) floating, positions and colours already divided by their sigma
};

inline BilateralArgs make_bilateral_args(const at::Tensor& values, const at::Tensor& features) {
  TORCH_CHECK(values.dim() == 4, "values: expected (B, C, H, W), got shape ", values.sizes());
  TORCH_CHECK(at::isFloatingType(values.scalar_type()), "values: expected a floating dtype, got ",
              values.scalar_type());
  TORCH_CHECK(features.dim() == 4 && features.size(0) == values.size(0) && features.size(2) == values.size(2) &&
                  features.size(3) == values.size(3),
              "features: expected shape (", values.size(0), ", d, ", values.size(2), ", ", values.size(3), "), got ",
              features.sizes());
  TORCH_CHECK(features.size(1) >= 1 && features.size(1) <= kMaxLatticeDim, "features: expected 1 to ",
              kMaxLatticeDim, " features per pixel, got ", features.size(1));
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), "features: expected a floating dtype, got ",
              features.scalar_type());
  TORCH_CHECK(features.device() == values.device(), "features: expected device ", values.device(), ", got ",
              features.device());
  TORCH_CHECK(features.scalar_type() != at::kHalf && features.scalar_type() != at::kBFloat16,
              "features: expected float32 or float64 (positions need more than 16 bits), got ", features.scalar_type());
  TORCH_CHECK(values.size(2) * values.size(3) <= kMaxLatticePixels, "values: at most ", kMaxLatticePixels,
              " pixels per image for the lattice, got ", values.size(2) * values.size(3));
  return {values, features};
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
