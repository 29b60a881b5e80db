// Tensors as kernels read and write them: the accumulation type, strided 4-D views usable on the host and
// the device, saturating narrowing to half types, strided copies.  Shared by every kernel family.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

#include "pottsops/device_code.h"  // POTTS_HD

namespace pottsops {

// The type a kernel on t accumulates in: double stays double, everything else (float, half, bfloat16) is
// float (at::opmath_type, the same rule; pottsops/reference.py accumulation_dtype in Python).
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
  // The address of element (n, c, h, w), for a run of elements that may be empty: no reference is formed, so
  // a tensor without elements (data null) gives null + 0 rather than a reference to nothing.
  POTTS_HD T* at(int64_t n, int64_t c, int64_t h, int64_t w) const { return data + offset(n, c, h, w); }
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
