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

}  // namespace pottsops
