// Host-side checks of the fused solver ops, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "pottsops/solver_math.h"
#include "pottsops/unaries.h"

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

// The unary's index and the energy's scalars of the solver ops.
inline void check_solver_scalars(int64_t kind, double eta, double lam, double unary_eps) {
  TORCH_CHECK(kind >= 0 && kind < kNumUnaries, "kind: expected an index in [0, ", int(kNumUnaries), "), got ", kind);
  TORCH_CHECK(std::isfinite(eta) && eta >= 0, "eta: expected a finite number >= 0, got ", eta);
  TORCH_CHECK(std::isfinite(lam) && lam >= 0, "lam: expected a finite number >= 0, got ", lam);
  TORCH_CHECK(std::isfinite(unary_eps) && unary_eps >= 0, "unary_eps: expected a finite number >= 0, got ",
              unary_eps);
}

// Where seeded, seeds holds a class id in [0, K): the step writes y[seed] = 1.  A pass over the seeds with a
// host sync, so the CUDA op skips it while a CUDA graph is captured (the eager run before capture checks).
inline void check_seed_ids(const at::Tensor& seeds, const at::Tensor& seeded, int64_t K) {
  if (seeds.numel() == 0) return;
  const at::Tensor used = at::where(seeded, seeds, at::zeros_like(seeds));
  TORCH_CHECK(used.min().item<int64_t>() >= 0 && used.max().item<int64_t>() < K, "seeds: expected class ids in [0, ",
              K - 1, "] where seeded");
}

// grid_solver_gradient: operand (contiguous) like y, the pixel masks contiguous (B, H, W).
inline void check_grid_solver_args(const at::Tensor& y, const at::Tensor& operand, const at::Tensor& unlabeled,
                                   const at::Tensor& seeded) {
  check_solver_tensors({{"operand", &operand}}, {{"unlabeled", &unlabeled}, {"seeded", &seeded}});
  TORCH_CHECK(y.sizes() == operand.sizes() && y.scalar_type() == operand.scalar_type() && y.device() == operand.device(),
              "y: expected the shape, dtype and device of operand ", operand.sizes(), " ", operand.scalar_type(), " ",
              operand.device(), ", got ", y.sizes(), " ", y.scalar_type(), " ", y.device());
}

// The constants of the adaptive step rule (solver_math.h) as the ops take them: rule = [lr, beta1, beta2,
// eps, log_floor] (the order of `rule` in pottsops/solver/__init__.py).
struct AdaptiveRule {
  double lr, beta1, beta2, eps, log_floor;

  explicit AdaptiveRule(at::ArrayRef<double> rule) {
    TORCH_CHECK(rule.size() == 5, "rule: expected [lr, beta1, beta2, eps, log_floor], got ", rule.size(), " values");
    lr = rule[0], beta1 = rule[1], beta2 = rule[2], eps = rule[3], log_floor = rule[4];
    TORCH_CHECK(std::isfinite(lr) && lr > 0, "rule: expected lr > 0, got ", lr);
    TORCH_CHECK(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "rule: expected betas in [0, 1), got ", beta1,
                ", ", beta2);
    TORCH_CHECK(std::isfinite(eps) && eps > 0, "rule: expected eps > 0, got ", eps);
    TORCH_CHECK(std::isfinite(log_floor) && log_floor < 0, "rule: expected log_floor < 0, got ", log_floor);
  }

  // Image constants at step t with the image's lr scale.
  template <typename T>
  AdaptiveStep<T> constants(int64_t t, double scale) const {
    return adaptive_step_constants<T>(static_cast<double>(t), lr * scale, beta1, beta2, eps, log_floor);
  }
};

// adaptive_step: theta, m, v, y and grad contiguous (B, K, H, W) of one dtype; steps (B,) int64 and scale
// (B,) float64 on y's device; seeds int64 where seeded.
inline void check_adaptive_step_args(const at::Tensor& theta, const at::Tensor& m, const at::Tensor& v,
                                     const at::Tensor& y, const at::Tensor& grad, const at::Tensor& steps,
                                     const at::Tensor& scale, const at::Tensor& seeds, const at::Tensor& seeded,
                                     at::ArrayRef<double> rule) {
  check_solver_tensors({{"y", &y}, {"theta", &theta}, {"m", &m}, {"v", &v}, {"grad", &grad}},
                       {{"seeds", &seeds}, {"seeded", &seeded}});
  (void)AdaptiveRule(rule);
  const int64_t B = y.size(0);
  TORCH_CHECK(seeds.scalar_type() == at::kLong, "seeds: expected int64, got ", seeds.scalar_type());
  TORCH_CHECK(seeded.scalar_type() == at::kBool, "seeded: expected bool, got ", seeded.scalar_type());
  TORCH_CHECK(steps.scalar_type() == at::kLong && steps.dim() == 1 && steps.size(0) == B &&
                  steps.device() == y.device(),
              "steps: expected an int64 (", B, ") tensor on ", y.device(), ", got ", steps.scalar_type(), " ",
              steps.sizes(), " on ", steps.device());
  TORCH_CHECK(scale.scalar_type() == at::kDouble && scale.dim() == 1 && scale.size(0) == B &&
                  scale.device() == y.device(),
              "scale: expected a float64 (", B, ") tensor on ", y.device(), ", got ", scale.scalar_type(), " ",
              scale.sizes(), " on ", scale.device());
}

// adaptive_solve's other arguments.
inline void check_adaptive_solve_args(const at::Tensor& y, const at::Tensor& seeds, const at::Tensor& seeded,
                                      const at::Tensor& lower,
                                      at::ArrayRef<double> rule, int64_t iters, double tol, int64_t window) {
  (void)AdaptiveRule(rule);
  TORCH_CHECK(seeds.scalar_type() == at::kLong, "seeds: expected int64, got ", seeds.scalar_type());
  check_seed_ids(seeds, seeded, y.size(1));
  TORCH_CHECK(lower.dim() == 1 && lower.size(0) == y.size(0) && lower.device() == y.device() &&
                  at::isFloatingType(lower.scalar_type()),
              "lower: expected a floating (", y.size(0), ") tensor on ", y.device(), ", got ", lower.scalar_type(),
              " ", lower.sizes());
  TORCH_CHECK(iters >= 0, "iters: expected an integer >= 0, got ", iters);
  TORCH_CHECK(std::isfinite(tol) && tol >= 0, "tol: expected a number >= 0, got ", tol);
  TORCH_CHECK(window >= 1, "window: expected an integer >= 1, got ", window);
}

}  // namespace pottsops
