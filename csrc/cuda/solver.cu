// The fused solver step on CUDA: one thread per pixel; per-image sums and maxima reduced per block in a
// fixed order (cub::BlockReduce) and then over blocks in a fixed order (deterministic; the only atomic is
// the counter that finds the last block of an image, which does not change any value).
//
// mirror_step and solver_gradient are the two-kernel step; mirror_fused_step is the one-launch step:
// the mirror step, the gradient at the stepped labels and each image's step control in one kernel.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include <limits>

#include "cuda/grid_device.cuh"
#include "pottsops/cuda_launch.cuh"
#include "pottsops/grid_args.h"
#include "pottsops/solver_args.h"
#include "pottsops/solver_math.h"

namespace pottsops {
namespace {

template <int U, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    solver_gradient_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ operand,
                           const scalar_t* __restrict__ potts_grad, const bool* __restrict__ unlabeled,
                           const bool* __restrict__ seeded, int64_t K, int64_t n, scalar_t eta, scalar_t lam,
                           scalar_t eps, scalar_t* __restrict__ grad, double* __restrict__ value_partial,
                           double* __restrict__ spread_partial) {
  const int64_t b = blockIdx.y;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  SolverPixelOut r{0.0, 0.0};
  if (pixel < n) {
    const int64_t base = b * K * n + pixel;
    r = solver_pixel<U, scalar_t>(
        K, unlabeled[b * n + pixel], seeded[b * n + pixel], eta, lam, eps,
        [&](int64_t k, scalar_t& yk, scalar_t& ok, scalar_t& gk) {
          yk = y[base + k * n];
          ok = operand[base + k * n];
          gk = potts_grad[base + k * n];
        },
        [&](int64_t k, scalar_t g) { grad[base + k * n] = g; });
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  const double total = Reduce(storage).Sum(r.value);
  __syncthreads();
  const double widest = Reduce(storage).Reduce(r.spread, [](double a, double c) { return a > c ? a : c; });
  if (threadIdx.x == 0) {
    value_partial[b * gridDim.x + blockIdx.x] = total;
    spread_partial[b * gridDim.x + blockIdx.x] = widest;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    mirror_step_kernel(const scalar_t* __restrict__ log_y, const scalar_t* __restrict__ grad,
                       const double* __restrict__ scale, const int64_t* __restrict__ seeds,
                       const bool* __restrict__ seeded, int64_t K, int64_t n, scalar_t log_floor,
                       scalar_t* __restrict__ new_log, scalar_t* __restrict__ new_y) {
  const int64_t b = blockIdx.y;
  const int64_t pixel = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (pixel >= n) return;
  const int64_t base = b * K * n + pixel;
  mirror_pixel<scalar_t>(
      K, seeded[b * n + pixel], seeds[b * n + pixel], static_cast<scalar_t>(scale[b]), log_floor,
      [&](int64_t k, scalar_t& l, scalar_t& g) {
        l = log_y[base + k * n];
        g = grad[base + k * n];
      },
      [&](int64_t k, scalar_t l, scalar_t v) {
        new_log[base + k * n] = l;
        new_y[base + k * n] = v;
      });
}

// The labels one mirror step ahead of an iterate, computed where they are read instead of stored and read
// back: on a free pixel y_k = exp(max(log y_k - s g_k - lse, log_floor)), lse the log-sum-exp over k of
// log y - s g, on a seeded pixel the one-hot seed; mirror_pixel's result (solver_math.h).  log_y and grad
// are the iterate's, contiguous (B, K, H, W); s is the image's step (one image per block).
template <typename scalar_t>
struct MirroredLabels {
  struct Pixel {
    int64_t base;  // index of class 0 of the pixel in log_y and grad
    int64_t seed;  // the seed's class on seeded pixels, -1 elsewhere
    scalar_t lse;
  };
  const scalar_t* __restrict__ log_y;
  const scalar_t* __restrict__ grad;
  const int64_t* __restrict__ seeds;
  const bool* __restrict__ seeded;
  int64_t K, n, W;
  scalar_t s, log_floor;

  __device__ Pixel at(int64_t b, int64_t h, int64_t w) const {
    const int64_t i = h * W + w;
    Pixel p{b * K * n + i, seeded[b * n + i] ? seeds[b * n + i] : int64_t(-1), scalar_t(0)};
    if (p.seed >= 0) return p;
    scalar_t m = 0;
    for (int64_t k = 0; k < K; ++k) {
      const scalar_t v = log_y[p.base + k * n] - s * grad[p.base + k * n];
      m = k == 0 ? v : (v > m ? v : m);
    }
    scalar_t total = 0;
    for (int64_t k = 0; k < K; ++k) total += potts_exp(log_y[p.base + k * n] - s * grad[p.base + k * n] - m);
    p.lse = m + potts_log(total);
    return p;
  }

  __device__ scalar_t log_label(const Pixel& p, int64_t k) const {
    if (p.seed >= 0) return k == p.seed ? scalar_t(0) : log_floor;
    const scalar_t v = log_y[p.base + k * n] - s * grad[p.base + k * n] - p.lse;
    return v < log_floor ? log_floor : v;
  }

  __device__ scalar_t operator()(const Pixel& p, int64_t k) const {
    if (p.seed >= 0) return k == p.seed ? scalar_t(1) : scalar_t(0);
    return potts_exp(log_label(p, k));
  }
};

// The per-image state of the one-launch step: columns of a (B, kStateColumns) double tensor, each value a
// scalar_t or a small integer held exactly.  kCurrent: which of the two buffers holds the iterate.
enum StateColumn { kCurrent, kTau, kEnergy, kSpread, kActive, kSteps, kAccepted, kStateColumns };

// One step of pottsops/solve.py's mirror descent for every active image, in one launch: each pixel's
// trial log y (into the other buffer) and the gradient there (solver_gradient_pixel over MirroredLabels),
// the trial's energy and spread reduced per block; the last block of an image to finish (a counter per
// image, reset by that block) sums the partials in a fixed order and runs _MirrorState._control: accept
// (swap buffers) or reject, tau, steps, active.  trace_row[b] gets the image's energy after the step.
template <int R, int U, int KMAX, typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    mirror_fused_kernel(const DeviceGrid<scalar_t> g, const PairTable<scalar_t> pairs,
                        scalar_t* __restrict__ log_buffers, scalar_t* __restrict__ grad_buffers,
                        double* __restrict__ state, unsigned int* __restrict__ arrived,
                        double* __restrict__ energy_partial, double* __restrict__ spread_partial,
                        const scalar_t* __restrict__ operand, const bool* __restrict__ unlabeled,
                        const bool* __restrict__ seeded, const int64_t* __restrict__ seeds, scalar_t eta,
                        scalar_t lam, scalar_t unary_eps, scalar_t log_floor, scalar_t tol,
                        scalar_t* __restrict__ trace_row) {
  const int64_t b = blockIdx.y, n = g.H * g.W, size = static_cast<int64_t>(gridDim.y) * g.K * n;
  double* own = state + b * kStateColumns;
  if (own[kActive] == 0) {  // a stopped image keeps its iterate
    if (blockIdx.x == 0 && threadIdx.x == 0) trace_row[b] = static_cast<scalar_t>(own[kEnergy]);
    return;
  }
  const int c = own[kCurrent] != 0 ? 1 : 0;
  const scalar_t tau = static_cast<scalar_t>(own[kTau]), spread_now = static_cast<scalar_t>(own[kSpread]);
  const scalar_t tiny = std::numeric_limits<scalar_t>::min();
  const MirroredLabels<scalar_t> labels{log_buffers + c * size, grad_buffers + c * size, seeds, seeded, g.K, n, g.W,
                                        tau / (spread_now > tiny ? spread_now : tiny), log_floor};
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  scalar_t energy = 0, spread = 0;
  if (i < n) {
    const int64_t base = b * g.K * n + i;
    scalar_t* grad_out = grad_buffers + (1 - c) * size + base;
    scalar_t* log_out = log_buffers + (1 - c) * size + base;
    solver_gradient_pixel<R, U, KMAX, scalar_t>(
        g, labels, pairs, operand, unlabeled, seeded, eta, lam, unary_eps, b, i,
        [&](int64_t k, scalar_t gk) { grad_out[k * n] = gk; }, energy, spread);
    const auto p = labels.at(b, i / g.W, i % g.W);
    for (int64_t k = 0; k < g.K; ++k) log_out[k * n] = labels.log_label(p, k);
  }
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ bool last;
  const auto widest_of = [](double x, double y) { return x > y ? x : y; };
  double total = Reduce(storage).Sum(static_cast<double>(energy));
  __syncthreads();
  double widest = Reduce(storage).Reduce(static_cast<double>(spread), widest_of);
  if (threadIdx.x == 0) {
    energy_partial[b * gridDim.x + blockIdx.x] = total;
    spread_partial[b * gridDim.x + blockIdx.x] = widest;
    __threadfence();  // the partials are visible before the count says so
    last = atomicAdd(arrived + b, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  total = 0;
  widest = 0;
  for (int64_t j = threadIdx.x; j < gridDim.x; j += kThreads) {  // a fixed order: deterministic
    total += __ldcg(energy_partial + b * gridDim.x + j);
    widest = widest_of(widest, __ldcg(spread_partial + b * gridDim.x + j));
  }
  __syncthreads();
  total = Reduce(storage).Sum(total);
  __syncthreads();
  widest = Reduce(storage).Reduce(widest, widest_of);
  if (threadIdx.x != 0) return;
  const scalar_t value = static_cast<scalar_t>(own[kEnergy]), trial = static_cast<scalar_t>(total);
  const bool accept = isfinite(trial) && trial <= value;
  const scalar_t magnitude = value < 0 ? -value : value, difference = value > trial ? value - trial : trial - value;
  const scalar_t change = difference / (magnitude > scalar_t(1e-30) ? magnitude : scalar_t(1e-30));
  const scalar_t next_tau = accept ? tau * scalar_t(1.25) : tau * scalar_t(0.5);
  own[kTau] = static_cast<double>(next_tau);
  own[kSteps] += 1;
  if (accept) {
    own[kCurrent] = 1 - c;
    own[kEnergy] = static_cast<double>(trial);
    own[kSpread] = static_cast<double>(static_cast<scalar_t>(widest));
    own[kAccepted] += 1;
  }
  own[kActive] = (accept && change < tol) || !(next_tau > scalar_t(1e-8)) ? 0 : 1;
  trace_row[b] = static_cast<scalar_t>(own[kEnergy]);
  arrived[b] = 0;  // ready for the next launch
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> solver_gradient_cuda(const at::Tensor& y, const at::Tensor& operand,
                                                                    const at::Tensor& potts_grad,
                                                                    const at::Tensor& unlabeled,
                                                                    const at::Tensor& seeded, int64_t kind,
                                                                    double eta, double lam, double eps) {
  check_solver_tensors({{"y", &y}, {"operand", &operand}, {"potts_grad", &potts_grad}},
                       {{"unlabeled", &unlabeled}, {"seeded", &seeded}});
  const c10::cuda::CUDAGuard guard(y.device());
  const int64_t B = y.size(0), K = y.size(1), n = y.size(2) * y.size(3);
  at::Tensor grad = at::empty_like(y);
  if (B * n == 0) return {at::zeros({B}, y.options()), grad, at::zeros({B}, y.options())};
  const dim3 grid = pixel_grid(B, 1, n, "y");
  at::Tensor value = at::empty({B, static_cast<int64_t>(grid.x)}, y.options().dtype(at::kDouble));
  at::Tensor spread = at::empty_like(value);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "solver_gradient_cuda", [&] {
    POTTS_DISPATCH_UNARY(kind, [&] {
      solver_gradient_kernel<U, scalar_t><<<grid, kThreads, 0, stream>>>(
          y.data_ptr<scalar_t>(), operand.data_ptr<scalar_t>(), potts_grad.data_ptr<scalar_t>(),
          unlabeled.data_ptr<bool>(), seeded.data_ptr<bool>(), K, n, static_cast<scalar_t>(eta),
          static_cast<scalar_t>(lam), static_cast<scalar_t>(eps), grad.data_ptr<scalar_t>(),
          value.data_ptr<double>(), spread.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {value.sum(1).to(y.scalar_type()), grad, std::get<0>(spread.max(1)).to(y.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> mirror_step_cuda(const at::Tensor& log_y, const at::Tensor& grad,
                                                    const at::Tensor& scale, const at::Tensor& seeds,
                                                    const at::Tensor& seeded, double log_floor) {
  check_solver_tensors({{"log_y", &log_y}, {"grad", &grad}}, {{"seeds", &seeds}, {"seeded", &seeded}});
  check_mirror_args(log_y, scale, seeds);
  const c10::cuda::CUDAGuard guard(log_y.device());
  const int64_t B = log_y.size(0), K = log_y.size(1), n = log_y.size(2) * log_y.size(3);
  at::Tensor new_log = at::empty_like(log_y), new_y = at::empty_like(log_y);
  if (B * n == 0) return {new_log, new_y};
  const at::Tensor scales = scale.to(at::kDouble).contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(log_y.scalar_type(), "mirror_step_cuda", [&] {
    mirror_step_kernel<scalar_t><<<pixel_grid(B, 1, n, "log_y"), kThreads, 0, stream>>>(
        log_y.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), scales.data_ptr<double>(), seeds.data_ptr<int64_t>(),
        seeded.data_ptr<bool>(), K, n, static_cast<scalar_t>(log_floor), new_log.data_ptr<scalar_t>(),
        new_y.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {new_log, new_y};
}

void mirror_fused_step_cuda(const at::Tensor& log_buffers, const at::Tensor& grad_buffers, const at::Tensor& state,
                            const at::Tensor& arrived, const at::Tensor& trace_row,
                            const c10::optional<at::Tensor>& image, const c10::optional<at::Tensor>& weights,
                            const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& inv_two_sigma2,
                            at::IntArrayRef offsets, at::ArrayRef<double> spatial, int64_t relaxation, double eps,
                            const at::Tensor& operand, const at::Tensor& unlabeled, const at::Tensor& seeded,
                            const at::Tensor& seeds, int64_t kind, double eta, double lam, double unary_eps,
                            double log_floor, double tol) {
  TORCH_CHECK(log_buffers.dim() == 5 && log_buffers.size(0) == 2 && log_buffers.is_contiguous(),
              "log_buffers: expected a contiguous (2, B, K, H, W) tensor, got shape ", log_buffers.sizes());
  const at::Tensor log_y = log_buffers[0], grad = grad_buffers[0];
  check_solver_tensors({{"log_buffers", &log_y}, {"grad_buffers", &grad}, {"operand", &operand}},
                       {{"unlabeled", &unlabeled}, {"seeded", &seeded}, {"seeds", &seeds}});
  TORCH_CHECK(grad_buffers.sizes() == log_buffers.sizes() && grad_buffers.is_contiguous(),
              "grad_buffers: expected the shape of log_buffers ", log_buffers.sizes(), ", got ", grad_buffers.sizes());
  TORCH_CHECK(seeds.scalar_type() == at::kLong, "seeds: expected int64, got ", seeds.scalar_type());
  const int64_t B = log_y.size(0), H = log_y.size(2), W = log_y.size(3);
  TORCH_CHECK(state.scalar_type() == at::kDouble && state.is_contiguous() && state.dim() == 2 && state.size(0) == B &&
                  state.size(1) == kStateColumns && state.device() == log_y.device(),
              "state: expected a contiguous float64 (", B, ", ", static_cast<int>(kStateColumns), ") tensor on ",
              log_y.device(), ", got ", state.scalar_type(), " of shape ", state.sizes());
  TORCH_CHECK(arrived.scalar_type() == at::kInt && arrived.is_contiguous() && arrived.numel() == B &&
                  arrived.device() == log_y.device(),
              "arrived: expected a contiguous int32 (", B, ") tensor of zeros on ", log_y.device());
  TORCH_CHECK(trace_row.scalar_type() == log_y.scalar_type() && trace_row.is_contiguous() && trace_row.numel() == B &&
                  trace_row.device() == log_y.device(),
              "trace_row: expected a contiguous ", log_y.scalar_type(), " (", B, ") tensor on ", log_y.device());
  const GridArgs args = make_grid_args(log_y, image, weights, mask, inv_two_sigma2, offsets, spatial, relaxation, eps);
  const c10::cuda::CUDAGuard guard(log_y.device());
  if (B == 0 || H * W == 0) return;
  const dim3 grid = pixel_grid(B, H, W, "log_buffers");
  at::Tensor energy = at::empty({B, static_cast<int64_t>(grid.x)}, state.options());
  at::Tensor spread = at::empty_like(energy);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(log_y.scalar_type(), "mirror_fused_step_cuda", [&] {
    using T = scalar_t;
    const DeviceGrid<T> g = device_grid<T>(args, log_y);
    const PairTable<T> pairs = pair_table<T>(args);
    dispatch_solver(args.relaxation, kind, log_y.size(1), [&](auto r, auto u, auto kmax) {
      mirror_fused_kernel<decltype(r)::value, decltype(u)::value, decltype(kmax)::value, T>
          <<<grid, kThreads, 0, stream>>>(g, pairs, log_buffers.data_ptr<T>(), grad_buffers.data_ptr<T>(),
                                          state.data_ptr<double>(),
                                          reinterpret_cast<unsigned int*>(arrived.data_ptr<int32_t>()),
                                          energy.data_ptr<double>(), spread.data_ptr<double>(), operand.data_ptr<T>(),
                                          unlabeled.data_ptr<bool>(), seeded.data_ptr<bool>(),
                                          seeds.data_ptr<int64_t>(), static_cast<T>(eta), static_cast<T>(lam),
                                          static_cast<T>(unary_eps), static_cast<T>(log_floor), static_cast<T>(tol),
                                          trace_row.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pottsops, CUDA, m) {
  m.impl("solver_gradient", &solver_gradient_cuda);
  m.impl("mirror_step", &mirror_step_cuda);
  m.impl("mirror_fused_step", &mirror_fused_step_cuda);
}

}  // namespace pottsops
