// Building blocks of the permutohedral lattice on CUDA (the construction and the blur are tensor
// operations in pottsops/lattice_tensors.py): the enclosing simplex of every pixel of a batch, one thread per
// pixel, and a deterministic segment sum (the splat), one thread per (segment, channel) summing its rows
// in order, no atomics.
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pottsops/lattice_args.h"
#include "cuda/launch.cuh"
#include "pottsops/tensor_views.h"  // accumulation_type
#include "pottsops/lattice.h"

namespace pottsops {
namespace {

template <typename scalar_t, typename weight_t>
__global__ void __launch_bounds__(kThreads)
    simplex_kernel(const scalar_t* __restrict__ features, int64_t batch_pixels, int64_t n, int d,
                   int32_t* __restrict__ keys, weight_t* __restrict__ weights) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (p >= batch_pixels) return;
  const int64_t b = p / n, i = p % n;
  double w[kMaxLatticeDim + 1], scale[kMaxLatticeDim];
  lattice_feature_scales(d, scale);
  const scalar_t* f = features + b * d * n + i;
  enclosing_simplex([&](int k) { return static_cast<double>(f[k * n]); }, d, scale, keys + p * (d + 1) * d, w);
  for (int r = 0; r <= d; ++r) weights[p * (d + 1) + r] = static_cast<weight_t>(w[r]);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    segment_sum_kernel(const scalar_t* __restrict__ rows, const int64_t* __restrict__ offsets, int64_t segments,
                       int64_t channels, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= segments * channels) return;
  const int64_t s = t / channels, c = t % channels;
  acc_t sum = 0;
  for (int64_t r = offsets[s]; r < offsets[s + 1]; ++r) sum += static_cast<acc_t>(rows[r * channels + c]);
  out[t] = static_cast<scalar_t>(sum);
}

unsigned blocks_for(int64_t threads, const char* arg) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks < (int64_t(1) << 31), arg, ": too large for the CUDA lattice (", threads, " threads)");
  return static_cast<unsigned>(blocks);
}

std::tuple<at::Tensor, at::Tensor> lattice_simplex_cuda(const at::Tensor& features) {
  check_lattice_features(features);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), d = features.size(1), n = features.size(2) * features.size(3);
  const at::Tensor f = features.reshape({B, d, n}).contiguous();
  check_lattice_feature_values(f);
  at::Tensor keys = at::empty({B, n, d + 1, d}, features.options().dtype(at::kInt));
  at::Tensor weights = at::empty({B, n, d + 1}, features.options().dtype(accumulation_type(features.scalar_type())));
  if (B * n == 0) return {keys, weights};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "lattice_simplex_cuda", [&] {
    using feature_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "lattice_simplex_cuda_weights", [&] {
      simplex_kernel<feature_t, scalar_t><<<blocks_for(B * n, "features"), kThreads, 0, stream>>>(
          f.data_ptr<feature_t>(), B * n, n, static_cast<int>(d), keys.data_ptr<int32_t>(), weights.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {keys, weights};
}

at::Tensor segment_sum_cuda(const at::Tensor& rows, const at::Tensor& offsets) {
  check_segments(rows, offsets);
  const c10::cuda::CUDAGuard guard(rows.device());
  const at::Tensor src = rows.contiguous();
  const at::Tensor bounds = offsets.contiguous();
  const int64_t S = offsets.size(0) - 1, C = rows.size(1);
  at::Tensor out = at::empty({S, C}, rows.options());
  if (S * C == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "segment_sum_cuda", [&] {
    segment_sum_kernel<scalar_t><<<blocks_for(S * C, "rows"), kThreads, 0, stream>>>(
        src.data_ptr<scalar_t>(), bounds.data_ptr<int64_t>(), S, C, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) {
  m.impl("lattice_simplex", &lattice_simplex_cuda);
  m.impl("segment_sum", &segment_sum_cuda);
}

}  // namespace pottsops
