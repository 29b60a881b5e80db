// Host-side checks of the bilateral filter op, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "pottsops/permutohedral.h"

namespace pottsops {

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
  TORCH_CHECK(values.size(2) * values.size(3) < (int64_t(1) << 31) / (features.size(1) + 1),
              "values: too many pixels per image for the lattice (", values.size(2) * values.size(3), ")");
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
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), "features: expected a floating dtype, got ",
              features.scalar_type());
}

inline void check_segments(const at::Tensor& rows, const at::Tensor& offsets) {
  TORCH_CHECK(rows.dim() == 2 && at::isFloatingType(rows.scalar_type()), "rows: expected a floating (R, C) tensor, got ",
              rows.scalar_type(), " of shape ", rows.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1 && offsets.scalar_type() == at::kLong,
              "offsets: expected an int64 (S + 1,) tensor, got ", offsets.scalar_type(), " of shape ", offsets.sizes());
  TORCH_CHECK(offsets.device() == rows.device(), "offsets: expected device ", rows.device(), ", got ", offsets.device());
}

}  // namespace pottsops
