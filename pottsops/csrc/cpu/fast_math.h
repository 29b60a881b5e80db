// exp and log for float written with plain arithmetic and bit operations, so that the compiler
// vectorises the loops that call them (a call to libm's expf/logf stops vectorisation).  Range reduction
// and minimax polynomials after Cephes (S. Moshier); about 1 ulp on normal inputs.  Host code only:
// device code uses the CUDA intrinsics.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace pottsops {

// Branch-free throughout (selects, not returns), which the vectoriser needs.
__attribute__((always_inline)) inline float bits_to_float(int32_t i) { return __builtin_bit_cast(float, i); }
__attribute__((always_inline)) inline int32_t float_to_bits(float f) { return __builtin_bit_cast(int32_t, f); }

__attribute__((always_inline)) inline float fast_expf(float x) {
  const float clamped = std::min(std::max(x, -87.33654f), 88.72283f);
  const float scaled = clamped * 1.44269504088896341f;
  // Round to nearest with the 1.5 * 2^23 trick (no rint call, which needs SSE4.1 to vectorise).
  const float fn = (scaled + 12582912.0f) - 12582912.0f;
  const int32_t n = static_cast<int32_t>(fn);
  float r = clamped - fn * 0.693359375f;  // ln 2 in two parts
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  // 2^n in two factors, so that n = 128 and n = -126 need no special case.
  const int32_t half = n >> 1;
  const float e = (p * r * r + r + 1.0f) * bits_to_float((half + 127) << 23) * bits_to_float((n - half + 127) << 23);
  const float high = x > 88.72283f ? std::numeric_limits<float>::infinity() : e;
  return x < -87.33654f ? 0.0f : high;  // below the smallest normal float: 0
}

__attribute__((always_inline)) inline float fast_logf(float x) {
  // Denormals are scaled into the normal range first.
  const bool tiny = x < 1.17549435e-38f;
  const float xn = tiny ? x * 8388608.0f : x;  // 2^23
  const int32_t bits = float_to_bits(xn);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126) - (tiny ? 23.0f : 0.0f);
  const float mantissa = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // xn = mantissa 2^e in [0.5, 1)
  const bool low = mantissa < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  const float m = low ? mantissa + mantissa - 1.0f : mantissa - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  const float result = x == std::numeric_limits<float>::infinity() ? x : m + y + e * 0.693359375f;
  const float positive = x > 0.0f ? result : std::numeric_limits<float>::quiet_NaN();  // negative or NaN
  return x == 0.0f ? -std::numeric_limits<float>::infinity() : positive;
}

}  // namespace pottsops
