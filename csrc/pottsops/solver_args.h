// Host-side checks of the fused solver ops, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

namespace pottsops {

// All (B, K, H, W) tensors contiguous in the same floating dtype; masks (B, H, W) bool; on one device.
inline void check_solver_tensors(std::initializer_list<std::pair<const char*, const at::Tensor*>> labels,
                                 std::initializer_list<std::pair<const char*, const at::Tensor*>> masks) {
  const at::Tensor& first = *labels.begin()->second;
  TORCH_CHECK(first.dim() == 4 && at::isFloatingType(first.scalar_type()), labels.begin()->first,
              ": expected a floating (B, K, H, W) tensor, got ", first.scalar_type(), " of shape ", first.sizes());
  for (const auto& [name, t] : labels) {
    TORCH_CHECK(t->sizes() == first.sizes() && t->scalar_type() == first.scalar_type() && t->is_contiguous() &&
                    t->device() == first.device(),
                name, ": expected a contiguous ", first.scalar_type(), " tensor of shape ", first.sizes(), " on ",
                first.device(), ", got ", t->scalar_type(), " of shape ", t->sizes(), " on ", t->device());
  }
  for (const auto& [name, t] : masks) {
    TORCH_CHECK(t->dim() == 3 && t->size(0) == first.size(0) && t->size(1) == first.size(2) &&
                    t->size(2) == first.size(3) && t->is_contiguous() && t->device() == first.device(),
                name, ": expected a contiguous (", first.size(0), ", ", first.size(2), ", ", first.size(3),
                ") tensor on ", first.device(), ", got shape ", t->sizes());
  }
}

// grid_solver_gradient: operand (contiguous) like y, the pixel masks contiguous (B, H, W).
inline void check_grid_solver_args(const at::Tensor& y, const at::Tensor& operand, const at::Tensor& unlabeled,
                                   const at::Tensor& seeded) {
  check_solver_tensors({{"operand", &operand}}, {{"unlabeled", &unlabeled}, {"seeded", &seeded}});
  TORCH_CHECK(y.sizes() == operand.sizes() && y.scalar_type() == operand.scalar_type() && y.device() == operand.device(),
              "y: expected the shape, dtype and device of operand ", operand.sizes(), " ", operand.scalar_type(), " ",
              operand.device(), ", got ", y.sizes(), " ", y.scalar_type(), " ", y.device());
}

inline void check_mirror_args(const at::Tensor& log_y, const at::Tensor& scale, const at::Tensor& seeds) {
  TORCH_CHECK(seeds.scalar_type() == at::kLong, "seeds: expected int64, got ", seeds.scalar_type());
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == log_y.size(0) && scale.device() == log_y.device(),
              "scale: expected shape (", log_y.size(0), ") on ", log_y.device(), ", got ", scale.sizes(), " on ",
              scale.device());
}

}  // namespace pottsops
