// Grid and window Potts energies, gradients and affinities on CUDA.
//
// One thread per pixel, threads of a block along w (coalesced reads of y in NCHW; neighbours' labels
// come from L1/L2).  The forward pass sums w P over the pairs that start at each pixel and reduces per
// block in a fixed order (cub::BlockReduce); the per-block partials are summed per image afterwards:
// deterministic, no atomics.  The backward pass is a gather (grid_device.cuh): each pixel visits the pairs
// that start and that end at it, recomputes their terms and writes its own gradient once.  Channels go
// through a register accumulator of KMAX classes (K > KMAX is done in chunks of KMAX, recomputing the pair
// terms).  The fused solver's gradient kernel (the most instantiations) is in grid_solver.cu, compiled in
// parallel with this file.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "cuda/grid_device.cuh"
#include "cuda/launch.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"

namespace pottsops {
namespace {

template <int R, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    energy_kernel(const DeviceGrid<scalar_t> g, const PairTable<at::opmath_type<scalar_t>> pairs,
                  at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const acc_t total = i < g.H * g.W ? energy_pixel<R, scalar_t>(g, pairs, b, i) : acc_t(0);
  using Reduce = cub::BlockReduce<acc_t, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const acc_t block_total = Reduce(storage).Sum(total);
  if (threadIdx.x == 0) partial[b * gridDim.x + blockIdx.x] = block_total;
}

template <int R, int KMAX, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const DeviceGrid<scalar_t> g, const PairTable<at::opmath_type<scalar_t>> pairs,
                    const at::opmath_type<scalar_t>* __restrict__ grad_energy, const View4<scalar_t> grad_y,
                    at::opmath_type<scalar_t>* __restrict__ grad_weights) {
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < g.H * g.W) backward_pixel<R, KMAX, scalar_t>(g, pairs, grad_energy[b], grad_y, grad_weights, b, i);
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    affinity_kernel(const DeviceGrid<acc_t> g, const PairTable<acc_t> pairs, const View4<acc_t> out) {
  const int64_t b = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < g.H * g.W) affinity_pixel<acc_t>(g, pairs, out, b, i);
}

at::Tensor grid_potts_energy_cuda(const at::Tensor& y, const c10::optional<at::Tensor>& image,
                                  const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
                                  const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
                                  at::ArrayRef<double> spatial, int64_t relaxation, double eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t B = y.size(0), H = y.size(2), W = y.size(3);
  if (B == 0 || H * W == 0) return at::zeros({B}, y.options().dtype(accumulation_type(y.scalar_type())));
  const dim3 grid = pixel_grid(B, H, W, "y");
  at::Tensor partial = at::empty({B, static_cast<int64_t>(grid.x)}, y.options().dtype(accumulation_type(y.scalar_type())));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "grid_potts_energy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const DeviceGrid<scalar_t> g = device_grid<scalar_t>(args, y);
    const CachedPairTable<acc_t> pairs = device_pair_table<acc_t>(args, y.device());
    POTTS_DISPATCH_RELAXATION(args.relaxation, [&] {
      energy_kernel<R, scalar_t><<<grid, kThreads, 0, stream>>>(g, pairs.view, partial.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  // Per-image sums of the per-block partials: a fixed-shape reduction, deterministic.
  return partial.sum(1);  // in the accumulation type: fp16's range ends at 65504
}

std::tuple<at::Tensor, at::Tensor> grid_potts_energy_backward_cuda(
    const at::Tensor& grad_energy, const at::Tensor& y, const c10::optional<at::Tensor>& image,
    const c10::optional<at::Tensor>& weights, const c10::optional<at::Tensor>& mask,
    const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial,
    int64_t relaxation, double eps, bool weights_grad) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_backward_args(grad_energy, args, weights_grad);
  const c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor go = grad_energy.to(accumulation_type(y.scalar_type())).contiguous();
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_w = weights_grad_buffer(args, weights_grad);
  const int64_t B = y.size(0), H = y.size(2), W = y.size(3);
  if (B > 0 && H * W > 0) {
    const dim3 grid = pixel_grid(B, H, W, "y");
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "grid_potts_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const DeviceGrid<scalar_t> g = device_grid<scalar_t>(args, y);
      const CachedPairTable<acc_t> pairs = device_pair_table<acc_t>(args, y.device());
      const View4<scalar_t> out = view4<scalar_t>(grad_y);
      acc_t* gw = weights_grad ? grad_w.data_ptr<acc_t>() : nullptr;
      POTTS_DISPATCH_RELAXATION(args.relaxation, [&] {
        dispatch_kmax(y.size(1), [&](auto kmax) {
          backward_kernel<R, decltype(kmax)::value, scalar_t>
              <<<grid, kThreads, 0, stream>>>(g, pairs.view, go.data_ptr<acc_t>(), out, gw);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }
  if (weights_grad) grad_w = grad_w.to(weights->scalar_type());
  return {grad_y, grad_w};
}

at::Tensor grid_affinity_cuda(const at::Tensor& image, const c10::optional<at::Tensor>& mask,
                              const at::Tensor& inv_two_sigma2, at::IntArrayRef offsets, at::ArrayRef<double> spatial) {
  const GridArgs args = make_affinity_args(image, mask, inv_two_sigma2, offsets, spatial);
  const c10::cuda::CUDAGuard guard(image.device());
  const int64_t B = image.size(0), H = image.size(2), W = image.size(3);
  at::Tensor out = at::empty({B, args.num_offsets(), H, W}, args.image.options());
  if (B == 0 || H * W == 0) return out;
  const dim3 grid = pixel_grid(B, H, W, "image");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(args.image.scalar_type(), "grid_affinity_cuda", [&] {
    const CachedPairTable<scalar_t> pairs = device_pair_table<scalar_t>(args, image.device());
    affinity_kernel<scalar_t>
        <<<grid, kThreads, 0, stream>>>(device_grid<scalar_t>(args, image), pairs.view, view4<scalar_t>(out));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) {
  m.impl("grid_potts_energy", &grid_potts_energy_cuda);
  m.impl("grid_potts_energy_backward", &grid_potts_energy_backward_cuda);
  m.impl("grid_affinity", &grid_affinity_cuda);
}

}  // namespace pottsops
