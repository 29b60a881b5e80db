// Host-side description of a grid/window Potts problem, shared by the CPU and CUDA launchers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <type_traits>
#include <vector>

#include "pottsops/relaxations.h"  // POTTS_HD

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

inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// A strided 4-D view: element (n, c, h, w) of a tensor of any memory layout, on host or device.
template <typename T>
struct View4 {
  T* data;
  int64_t sn, sc, sh, sw;
  POTTS_HD int64_t offset(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return n * sn + c * sc + h * sh + w * sw;
  }
  POTTS_HD T& operator()(int64_t n, int64_t c, int64_t h, int64_t w) const { return data[offset(n, c, h, w)]; }
};

template <typename T>
View4<T> view4(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename T>
View4<const T> const_view4(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// A (B, H, W) tensor (mask, per-pixel loss) as a 4-D view with a unit channel dimension.
template <typename T>
View4<T> pixel_view(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), 0, t.stride(1), t.stride(2)};
}

template <typename T>
View4<const T> const_pixel_view(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), 0, t.stride(1), t.stride(2)};
}

// v as a T; into fp16 or bf16, saturated at the type's largest finite value, so that a gradient of order
// 1/eps stays finite (docs/contract.md §8: no Inf from valid input in any dtype).  NaN stays NaN.
template <typename T, typename A>
POTTS_HD T narrow(A v) {
  if constexpr (std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>) {
    const A top = std::is_same_v<T, c10::Half> ? A(65504.0f) : A(3.38953139e38f);
    v = v > top ? top : (v < -top ? -top : v);
  }
  return static_cast<T>(v);
}

// Copies n strided elements to/from a contiguous buffer, converting the type (narrow); the unit-stride case
// is separate so that it vectorises.
template <typename From, typename To>
inline void copy_strided(const From* __restrict__ src, int64_t src_stride, To* __restrict__ dst,
                         int64_t dst_stride, int64_t n) {
  if (src_stride == 1 && dst_stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = narrow<To>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * dst_stride] = narrow<To>(src[i * src_stride]);
  }
}

}  // namespace pottsops
