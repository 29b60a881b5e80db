// What the CUDA kernels' device code needs in order to compile for the host too: csrc/cpu/
// tests/csrc/device_emulation.cpp runs the per-thread code of csrc/cuda/*.cuh there, so that CI, which has no GPU,
// tests it.  POTTS_DEVICE marks a function a CUDA thread runs; POTTS_UNROLL asks nvcc to unroll a loop.
#pragma once

#if defined(__CUDACC__)
#define POTTS_DEVICE __device__
#define POTTS_UNROLL _Pragma("unroll")
#else
#define POTTS_DEVICE inline
#define POTTS_UNROLL
#endif

namespace pottsops {

// The kernels' block size: one thread per pixel, kThreads pixels per block (the emulation reduces per
// block in the same shape).
constexpr int kThreads = 256;

}  // namespace pottsops
