// The CUDA kernels' block size, also read by the host emulation of their device code
// (cpu/device_emulation.cpp), which reduces per block in the same launch shape.
#pragma once

namespace pottsops {

constexpr int kThreads = 256;

}  // namespace pottsops
