// Elementary functions for every C++ and CUDA kernel: the CUDA builtins on the device; on the host,
// vectorisable versions for float (cpu/fast_math.h) and libm for double.
#pragma once

#include <cmath>

#include "pottsops/device_code.h"  // POTTS_HD

#ifndef __CUDACC__
#include "cpu/fast_math.h"
#endif

namespace pottsops {

template <typename T>
POTTS_HD T potts_sqrt(T x) { return sqrt(x); }
template <typename T>
POTTS_HD T potts_max(T x, T y) { return x > y ? x : y; }
#ifdef __CUDACC__
template <typename T>
POTTS_HD T potts_log(T x) { return log(x); }
template <typename T>
POTTS_HD T potts_exp(T x) { return exp(x); }
#else
POTTS_HD float potts_log(float x) { return fast_logf(x); }
POTTS_HD double potts_log(double x) { return std::log(x); }
POTTS_HD float potts_exp(float x) { return fast_expf(x); }
POTTS_HD double potts_exp(double x) { return std::exp(x); }
#endif

}  // namespace pottsops
