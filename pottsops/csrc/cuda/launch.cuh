// Launch shape shared by the CUDA kernels: one thread per pixel, blocks of kThreads along h*w, one grid
// row per image.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "pottsops/device_code.h"

namespace pottsops {

// `arg` names the tensor whose (B, H, W) is too large, for the error message.
inline dim3 pixel_grid(int64_t B, int64_t H, int64_t W, const char* arg) {
  const int64_t blocks = (H * W + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks < (int64_t(1) << 31) && B < 65536, arg, ": too large for the CUDA kernels (B < 65536 and H*W < ",
              (int64_t(1) << 31) * kThreads, " needed), got B=", B, ", H*W=", H * W);
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(B));
}

// The most bytes of parameters a kernel takes with CUDA 12.1 and later (4096 before), and a static check that
// the largest launch (a solver-gradient kernel: grid, pair table in double, views and scalars) fits.
constexpr size_t kMaxKernelParameterBytes = 32764;

// The grid kernels' parameters pass 4 KB (grid_device.cuh PairTable), which needs a driver for CUDA 12.1 or
// later; older drivers would refuse the launch with an unclear error.
inline void check_driver_takes_large_parameters() {
  static const int version = [] {
    int v = 0;
    return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
  }();
  TORCH_CHECK(version >= 12010, "CUDA driver: pottsops' grid kernels take up to 7 KB of parameters, which needs a "
              "driver for CUDA 12.1 or later (version 530 or later); this one supports CUDA ", version / 1000, ".",
              version % 1000 / 10, ": update the NVIDIA driver, or use backend='triton' or 'cpu'");
}

}  // namespace pottsops
