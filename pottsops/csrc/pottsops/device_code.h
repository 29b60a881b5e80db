// What code shared by the host and the device needs in order to compile for both: POTTS_HD marks a function
// both call (the math headers); POTTS_DEVICE a function a CUDA thread runs, compiled for the host too, where
// tests/csrc/device_emulation.cpp runs the per-thread code of csrc/cuda/*.cuh so that CI, which has no GPU,
// tests it; POTTS_UNROLL asks nvcc to unroll a loop.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define POTTS_HD __host__ __device__ __forceinline__
#else
#define POTTS_HD inline __attribute__((always_inline))  // inlined into the loops, which then vectorise
#endif

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
