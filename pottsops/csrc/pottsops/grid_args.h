// Host-side description of a grid/window Potts problem, shared by the CPU and CUDA launchers: the checked
// arguments of the grid ops (the views of their tensors: tensor_views.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "pottsops/tensor_views.h"

namespace pottsops {

constexpr int kMaxOffsets = 512;  // window(radius <= 15) fits; checked in Python and here.

// Validated arguments of the grid ops.  image and weights are converted to the accumulation type
// (float for half/bfloat16/float, double for double) so kernels are templated on y's dtype alone.
struct GridArgs {
  at::Tensor y;                 // (B, K, H, W), any strides
  at::Tensor image;             // (B, C, H, W) or undefined
  at::Tensor weights;           // (B, E, H, W) or undefined
  at::Tensor mask;              // (B, H, W) bool or undefined
  at::Tensor inv_two_sigma2;    // (B,) 1 / (2 sigma_rgb^2), defined iff image is
  std::vector<int64_t> dy, dx;  // E offsets, one half-plane
  std::vector<double> spatial;  // E spatial factors g_e
  int relaxation = 0;
  double eps = 1e-8;

  int64_t batch() const { return y.size(0); }
  int64_t channels() const { return y.size(1); }
  int64_t height() const { return y.size(2); }
  int64_t width() const { return y.size(3); }
  int64_t num_offsets() const { return static_cast<int64_t>(dy.size()); }
};

GridArgs make_grid_args(const at::Tensor& y, const c10::optional<at::Tensor>& image,
                        const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
                        const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
                        at::ArrayRef<double> spatial, int64_t relaxation, double eps);

// grid_potts_energy_backward's further arguments: grad_energy (B,) on y's device; weights_grad needs weights.
void check_backward_args(const at::Tensor& grad_energy, const GridArgs& args, bool weights_grad);

// Where the backward kernels write dE/dw: zeros of the weights' shape in their accumulation type, contiguous
// (B, E, H, W), if weights_grad; else an empty tensor.
at::Tensor weights_grad_buffer(const GridArgs& args, bool weights_grad);

// Same checks without labels, for the affinity op (y is left undefined).
GridArgs make_affinity_args(const at::Tensor& image, const c10::optional<at::Tensor>& mask,
                            const at::Tensor& inv_two_sigma2, at::IntArrayRef offsets,
                            at::ArrayRef<double> spatial);

}  // namespace pottsops
