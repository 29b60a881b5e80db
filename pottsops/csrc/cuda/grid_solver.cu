// The fused solver's gradient on CUDA (grid_solver_gradient): the grid Potts backward pass with the unary
// folded in, one thread per pixel (grid_device.cuh's solver_gradient_pixel), the energy reduced per block in
// a fixed order.  Apart from grid_potts.cu so that the two, the longest translation units, compile in
// parallel (relaxations x unaries x register widths x dtypes are instantiated here).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "cuda/grid_device.cuh"
#include "cuda/launch.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/solver_args.h"

namespace pottsops {
namespace {

// grid_solver_gradient: solver_gradient_pixel (grid_device.cuh) for every pixel, the energy reduced per
// block in a fixed order.  operand, unlabeled, seeded and grad are contiguous.
template <int R, int U, int KMAX, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    solver_gradient_kernel(const DeviceGrid<scalar_t> g, const PairTable<scalar_t> pairs,
                           const scalar_t* __restrict__ operand, const bool* __restrict__ unlabeled,
                           const bool* __restrict__ seeded, scalar_t eta, scalar_t lam, scalar_t unary_eps,
                           scalar_t* __restrict__ grad, double* __restrict__ energy_partial) {
  const int64_t b = blockIdx.y, n = g.H * g.W;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  scalar_t energy = 0;
  if (i < n) {
    scalar_t* out = grad + b * g.K * n + i;
    solver_gradient_pixel<R, U, KMAX, scalar_t>(
        g, g.stored(), pairs, operand, unlabeled, seeded, eta, lam, unary_eps, b, i,
        [&](int64_t k, scalar_t gk) { out[k * n] = gk; }, energy);
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const double total = Reduce(storage).Sum(static_cast<double>(energy));
  if (threadIdx.x == 0) energy_partial[b * gridDim.x + blockIdx.x] = total;
}

std::tuple<at::Tensor, at::Tensor> grid_solver_gradient_cuda(
    const at::Tensor& y, const c10::optional<at::Tensor>& image, const c10::optional<at::Tensor>& weights,
    const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& inv_two_sigma2, at::IntArrayRef offsets,
    at::ArrayRef<double> spatial, int64_t relaxation, double eps, const at::Tensor& operand,
    const at::Tensor& unlabeled, const at::Tensor& seeded, int64_t kind, double eta, double lam, double unary_eps) {
  const GridArgs args = make_grid_args(y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  check_grid_solver_args(y, operand, unlabeled, seeded);
  check_solver_scalars(kind, eta, lam, unary_eps);
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t B = y.size(0), H = y.size(2), W = y.size(3);
  at::Tensor grad = at::empty_like(y, at::MemoryFormat::Contiguous);
  if (B == 0 || H * W == 0) return {at::zeros({B}, y.options()), grad};
  const dim3 grid = pixel_grid(B, H, W, "y");
  at::Tensor energy = at::empty({B, static_cast<int64_t>(grid.x)}, y.options().dtype(at::kDouble));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "grid_solver_gradient_cuda", [&] {
    const DeviceGrid<scalar_t> g = device_grid<scalar_t>(args, y);
    const CachedPairTable<scalar_t> pairs = device_pair_table<scalar_t>(args, y.device());
    dispatch_solver(args.relaxation, kind, y.size(1), [&](auto r, auto u, auto kmax) {
      solver_gradient_kernel<decltype(r)::value, decltype(u)::value, decltype(kmax)::value, scalar_t>
          <<<grid, kThreads, 0, stream>>>(g, pairs.view, operand.data_ptr<scalar_t>(), unlabeled.data_ptr<bool>(),
                                          seeded.data_ptr<bool>(), static_cast<scalar_t>(eta),
                                          static_cast<scalar_t>(lam), static_cast<scalar_t>(unary_eps),
                                          grad.data_ptr<scalar_t>(), energy.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {energy.sum(1).to(y.scalar_type()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) { m.impl("grid_solver_gradient", &grid_solver_gradient_cuda); }

}  // namespace pottsops
