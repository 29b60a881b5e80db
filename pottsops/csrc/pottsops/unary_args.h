// Host-side checks of the unary ops, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "pottsops/relaxations.h"
#include "pottsops/unaries.h"

namespace pottsops {

struct UnaryArgs {
  at::Tensor logits;  // (B, K, H, W)
  at::Tensor y;       // (B, K, H, W), same dtype as logits
  at::Tensor mask;    // (B, H, W) bool or undefined
  int kind = 0;
  double eps = 1e-8;
};

inline UnaryArgs make_unary_args(const at::Tensor& logits, const at::Tensor& y,
                                 const c10::optional<at::Tensor>& mask, int64_t kind, double eps) {
  TORCH_CHECK(logits.dim() == 4, "logits: expected (B, K, H, W), got shape ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "logits: expected a floating dtype, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.size(1) >= 2, "logits: expected K >= 2 classes, got ", logits.size(1));
  TORCH_CHECK(y.sizes() == logits.sizes(), "y: expected the shape of logits ", logits.sizes(), ", got ",
              y.sizes());
  TORCH_CHECK(y.scalar_type() == logits.scalar_type(), "y: expected dtype ", logits.scalar_type(),
              " (that of logits), got ", y.scalar_type());
  TORCH_CHECK(y.device() == logits.device(), "y: expected device ", logits.device(), ", got ", y.device());
  TORCH_CHECK(kind >= 0 && kind < kNumUnaries, "kind: expected an index in [0, ", int(kNumUnaries), "), got ",
              kind);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps: expected a finite number >= 0, got ", eps);
  UnaryArgs args{logits, y, at::Tensor(), static_cast<int>(kind), eps};
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool, "mask: expected dtype bool, got ", m.scalar_type());
    TORCH_CHECK(m.dim() == 3 && m.size(0) == logits.size(0) && m.size(1) == logits.size(2) &&
                    m.size(2) == logits.size(3),
                "mask: expected shape (", logits.size(0), ", ", logits.size(2), ", ", logits.size(3), "), got ",
                m.sizes());
    TORCH_CHECK(m.device() == logits.device(), "mask: expected device ", logits.device(), ", got ", m.device());
    args.mask = m;
  }
  return args;
}

inline void check_unary_grad(const at::Tensor& grad_loss, const at::Tensor& logits) {
  TORCH_CHECK(grad_loss.dim() == 3 && grad_loss.size(0) == logits.size(0) && grad_loss.size(1) == logits.size(2) &&
                  grad_loss.size(2) == logits.size(3),
              "grad_loss: expected shape (", logits.size(0), ", ", logits.size(2), ", ", logits.size(3), "), got ",
              grad_loss.sizes());
  TORCH_CHECK(grad_loss.device() == logits.device(), "grad_loss: expected device ", logits.device(), ", got ",
              grad_loss.device());
}

}  // namespace pottsops
