// The device side of the CUDA grid/window Potts kernels, shared by the grid ops (grid_potts.cu) and the
// fused solver step (solver.cu).
//
// One thread per pixel.  A pixel's gradient is a gather over the pairs that start and that end at it; the
// labels come through a label source (StoredLabels reads y; at(b, h, w) returns what a source needs per
// pixel visited).  Also compiled for the host (pottsops/device_code.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "pottsops/device_code.h"
#include "pottsops/grid_args.h"
#include "pottsops/relaxations.h"
#include "pottsops/table_cache.h"
#include "pottsops/unaries.h"
#ifdef __CUDACC__
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace pottsops {

// The offsets and spatial factors of the pairs, read from memory the kernel can reach: a copy on the device
// for the CUDA kernels (device_pair_table, kept by a TableCache so that CUDA graphs can replay the launch),
// host memory for the emulation.  As a kernel parameter the table would take up to 6 KB, past the 4 KB CUDA
// allowed before 12.1.  Its bytes (pair_table_bytes): count spatial factors, then count dy, then count dx.
template <typename acc_t>
struct PairTable {
  int count;
  const acc_t* spatial;
  const int16_t* dy;
  const int16_t* dx;
};

// Labels read from y (any strides).
template <typename scalar_t>
struct StoredLabels {
  using acc_t = at::opmath_type<scalar_t>;
  struct Pixel {
    int64_t b, h, w;
  };
  View4<const scalar_t> y;

  POTTS_DEVICE Pixel at(int64_t b, int64_t h, int64_t w) const { return {b, h, w}; }
  POTTS_DEVICE acc_t operator()(const Pixel& p, int64_t k) const { return static_cast<acc_t>(y(p.b, k, p.h, p.w)); }
};

// The image, weights and mask of a grid problem and its edge weights.
template <typename scalar_t>
struct DeviceGrid {
  using acc_t = at::opmath_type<scalar_t>;
  View4<const scalar_t> y;
  View4<const acc_t> image, weights;
  View4<const bool> mask;
  const acc_t* inv_two_sigma2;
  int64_t K, H, W, C;
  acc_t eps;

  POTTS_DEVICE bool present(int64_t b, int64_t h, int64_t w) const { return !mask.data || mask(b, 0, h, w); }

  POTTS_DEVICE bool inside(int64_t h, int64_t w) const { return h >= 0 && h < H && w >= 0 && w < W; }

  // Weight of the pair (h, w) -> (h + dy_e, w + dx_e), both ends present.
  POTTS_DEVICE acc_t weight(const PairTable<acc_t>& pairs, int64_t b, int e, int64_t h, int64_t w) const {
    if (weights.data) return weights(b, e, h, w);
    const acc_t spatial = pairs.spatial[e];
    if (!image.data) return spatial;
    const int64_t h2 = h + pairs.dy[e], w2 = w + pairs.dx[e];
    acc_t d2 = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t d = image(b, c, h, w) - image(b, c, h2, w2);
      d2 += d * d;
    }
    return spatial * potts_exp(-d2 * inv_two_sigma2[b]);
  }

  POTTS_DEVICE StoredLabels<scalar_t> stored() const { return {y}; }

  template <typename Labels>
  POTTS_DEVICE acc_t norm(const Labels& labels, const typename Labels::Pixel& p) const {
    acc_t a = 0;
    for (int64_t k = 0; k < K; ++k) {
      const acc_t v = labels(p, k);
      a += v * v;
    }
    return a;
  }

  // s = p . q and |q|^2.
  template <typename Labels>
  POTTS_DEVICE void dot(const Labels& labels, const typename Labels::Pixel& p, const typename Labels::Pixel& q,
                      acc_t& s, acc_t& nq) const {
    s = 0;
    nq = 0;
    for (int64_t k = 0; k < K; ++k) {
      const acc_t v = labels(q, k);
      s += labels(p, k) * v;
      nq += v * v;
    }
  }
};

template <typename scalar_t>
DeviceGrid<scalar_t> device_grid(const GridArgs& args, const at::Tensor& like) {
  using acc_t = at::opmath_type<scalar_t>;
  DeviceGrid<scalar_t> g{};
  if (args.y.defined()) g.y = const_view4<scalar_t>(args.y);
  if (args.image.defined()) {
    g.image = const_view4<acc_t>(args.image);
    g.inv_two_sigma2 = args.inv_two_sigma2.data_ptr<acc_t>();
    g.C = args.image.size(1);
  }
  if (args.weights.defined()) g.weights = const_view4<acc_t>(args.weights);
  if (args.mask.defined()) {
    g.mask = const_pixel_view<bool>(args.mask);
  }
  g.K = args.y.defined() ? args.y.size(1) : 0;
  g.H = like.size(2);
  g.W = like.size(3);
  g.eps = static_cast<acc_t>(args.eps);
  return g;
}

// The table of args' offsets in the layout PairTable reads, acc_t's spatial factors first (aligned).
template <typename acc_t>
std::vector<uint8_t> pair_table_bytes(const GridArgs& args) {
  const int64_t count = args.num_offsets();
  TORCH_CHECK(count <= kMaxOffsets, "offsets: at most ", kMaxOffsets, " supported");
  const size_t dy_at = count * sizeof(acc_t), dx_at = dy_at + count * sizeof(int16_t);
  std::vector<uint8_t> bytes(dx_at + count * sizeof(int16_t));
  for (int64_t e = 0; e < count; ++e) {
    TORCH_CHECK(args.dy[e] < 32768 && args.dx[e] < 32768 && args.dx[e] > -32768, "offsets: (", args.dy[e], ", ",
                args.dx[e], ") too large");
    const acc_t spatial = static_cast<acc_t>(args.spatial[e]);
    const int16_t dy = static_cast<int16_t>(args.dy[e]), dx = static_cast<int16_t>(args.dx[e]);
    std::memcpy(bytes.data() + e * sizeof(acc_t), &spatial, sizeof(acc_t));
    std::memcpy(bytes.data() + dy_at + e * sizeof(int16_t), &dy, sizeof(int16_t));
    std::memcpy(bytes.data() + dx_at + e * sizeof(int16_t), &dx, sizeof(int16_t));
  }
  return bytes;
}

// The PairTable of count pairs whose bytes (pair_table_bytes) start at `bytes` (aligned for acc_t).
template <typename acc_t>
PairTable<acc_t> pair_table_at(const uint8_t* bytes, int64_t count) {
  const auto* spatial = reinterpret_cast<const acc_t*>(bytes);
  const auto* dy = reinterpret_cast<const int16_t*>(spatial + count);
  return {static_cast<int>(count), spatial, dy, dy + count};
}

// A pair table kept by a TableCache on a device: the cache's tensor, which the caller holds while its
// kernels are queued, and the view the kernels read.
template <typename acc_t>
struct CachedPairTable {
  at::Tensor bytes;
  PairTable<acc_t> view;
};

template <typename acc_t>
CachedPairTable<acc_t> cached_pair_table(TableCache& cache, const GridArgs& args, const at::Device& device,
                                         bool capturing) {
  at::Tensor bytes = cache.get(pair_table_bytes<acc_t>(args), device, capturing, "offsets");
  return {bytes, pair_table_at<acc_t>(bytes.defined() ? bytes.data_ptr<uint8_t>() : nullptr, args.num_offsets())};
}

#ifdef __CUDACC__
// The CUDA grid kernels' tables: one cache for the library (an inline function's static is one object).
// 256 tables of at most 6 KB.
inline TableCache& device_tables() {
  static TableCache cache(256);
  return cache;
}

// args' table on `device` for a launch on the current stream.  The stream is recorded on the table's memory,
// so that PyTorch's allocator reuses it only after the launch, should the cache drop it meanwhile.
template <typename acc_t>
CachedPairTable<acc_t> device_pair_table(const GridArgs& args, const at::Device& device) {
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  const bool capturing = status != cudaStreamCaptureStatusNone;
  CachedPairTable<acc_t> table = cached_pair_table<acc_t>(device_tables(), args, device, capturing);
  if (table.bytes.defined() && !capturing)
    c10::cuda::CUDACachingAllocator::recordStream(table.bytes.storage().data_ptr(), stream);
  return table;
}
#endif

// The Potts gradient of pixel p = (h, w) for the classes c0 .. c0 + KMAX - 1: acc[k] gathers go w dP/ds q_k
// over the pairs that start (direction 0) and that end (direction 1) at it, self the factor of its own
// label (2 go w dP/da); a = |p|^2.  energy, if not null, gets go w P of the pairs that start at it (chunk 0
// only); grad_weights (contiguous (B, E, H, W), pre-zeroed), if not null, dE/dw of those pairs.
template <int R, int KMAX, typename scalar_t, typename Labels>
POTTS_DEVICE void potts_gradient_chunk(const DeviceGrid<scalar_t>& g, const Labels& labels,
                                     const PairTable<at::opmath_type<scalar_t>>& pairs, int64_t b, int64_t h,
                                     int64_t w, const typename Labels::Pixel& p, int64_t c0,
                                     at::opmath_type<scalar_t> go, at::opmath_type<scalar_t> a,
                                     at::opmath_type<scalar_t>* acc, at::opmath_type<scalar_t>& self,
                                     at::opmath_type<scalar_t>* energy,
                                     at::opmath_type<scalar_t>* __restrict__ grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
POTTS_UNROLL
  for (int k = 0; k < KMAX; ++k) acc[k] = 0;
  self = 0;
  for (int direction = 0; direction < 2; ++direction) {
    for (int e = 0; e < pairs.count; ++e) {
      const int64_t sign = direction == 0 ? 1 : -1;
      const int64_t h2 = h + sign * pairs.dy[e], w2 = w + sign * pairs.dx[e];
      if (!g.inside(h2, w2) || !g.present(b, h2, w2)) continue;
      const acc_t wt = direction == 0 ? g.weight(pairs, b, e, h, w) : g.weight(pairs, b, e, h2, w2);
      const bool weight_grad = grad_weights && direction == 0 && c0 == 0;
      if (wt == acc_t(0) && !weight_grad) continue;
      const typename Labels::Pixel q = labels.at(b, h2, w2);
      acc_t s, nq;
      g.dot(labels, p, q, s, nq);
      const PairTerms<acc_t> t =
          direction == 0 ? pair_terms<R, acc_t>(s, a, nq, g.eps) : pair_terms<R, acc_t>(s, nq, a, g.eps);
      if (weight_grad) grad_weights[((b * pairs.count + e) * g.H + h) * g.W + w] = go * t.value;
      if (wt == acc_t(0)) continue;
      const acc_t scale = go * wt;
      if (energy && direction == 0 && c0 == 0) *energy += scale * t.value;
      self += 2 * scale * (direction == 0 ? t.d_a : t.d_b);
      const acc_t cross = scale * t.d_s;
POTTS_UNROLL
      for (int k = 0; k < KMAX; ++k)
        if (c0 + k < g.K) acc[k] += cross * labels(q, c0 + k);
    }
  }
}

// The work of one thread of the grid kernels (grid_potts.cu, which add the block reductions): pixel
// i = h * W + w of image b.

// w P summed over the pairs that start at the pixel (grid_potts_energy).
template <int R, typename scalar_t>
POTTS_DEVICE at::opmath_type<scalar_t> energy_pixel(const DeviceGrid<scalar_t>& g,
                                                    const PairTable<at::opmath_type<scalar_t>>& pairs, int64_t b,
                                                    int64_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t h = i / g.W, w = i % g.W;
  acc_t total = 0;
  if (!g.present(b, h, w)) return total;
  const StoredLabels<scalar_t> labels = g.stored();
  const auto p = labels.at(b, h, w);
  const acc_t a = g.norm(labels, p);
  for (int e = 0; e < pairs.count; ++e) {
    const int64_t h2 = h + pairs.dy[e], w2 = w + pairs.dx[e];
    if (!g.inside(h2, w2) || !g.present(b, h2, w2)) continue;
    const acc_t wt = g.weight(pairs, b, e, h, w);
    if (wt == acc_t(0)) continue;  // also where P is infinite: a zero weight removes the pair
    acc_t s, nq;
    g.dot(labels, p, labels.at(b, h2, w2), s, nq);
    total += wt * pair_terms<R, acc_t>(s, a, nq, g.eps).value;
  }
  return total;
}

// grad_y of the pixel, KMAX channels at a time, for the energy's gradient go; grad_weights as in
// potts_gradient_chunk (grid_potts_energy_backward).
template <int R, int KMAX, typename scalar_t>
POTTS_DEVICE void backward_pixel(const DeviceGrid<scalar_t>& g, const PairTable<at::opmath_type<scalar_t>>& pairs,
                                 at::opmath_type<scalar_t> go, const View4<scalar_t>& grad_y,
                                 at::opmath_type<scalar_t>* __restrict__ grad_weights, int64_t b, int64_t i) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t h = i / g.W, w = i % g.W;
  if (!g.present(b, h, w)) {
    for (int64_t k = 0; k < g.K; ++k) grad_y(b, k, h, w) = scalar_t(0);
    return;
  }
  const StoredLabels<scalar_t> labels = g.stored();
  const auto p = labels.at(b, h, w);
  const acc_t a = g.norm(labels, p);
  for (int64_t c0 = 0; c0 < g.K; c0 += KMAX) {
    acc_t acc[KMAX], self;
    potts_gradient_chunk<R, KMAX, scalar_t>(g, labels, pairs, b, h, w, p, c0, go, a, acc, self, nullptr,
                                            grad_weights);
POTTS_UNROLL
    for (int k = 0; k < KMAX; ++k)
      if (c0 + k < g.K) grad_y(b, c0 + k, h, w) = narrow<scalar_t>(acc[k] + self * labels(p, c0 + k));
  }
}

// The weights of the pairs that start at the pixel, 0 where an end is outside or masked (grid_affinity).
template <typename acc_t>
POTTS_DEVICE void affinity_pixel(const DeviceGrid<acc_t>& g, const PairTable<acc_t>& pairs, const View4<acc_t>& out,
                                 int64_t b, int64_t i) {
  const int64_t h = i / g.W, w = i % g.W;
  const bool here = g.present(b, h, w);
  for (int e = 0; e < pairs.count; ++e) {
    const int64_t h2 = h + pairs.dy[e], w2 = w + pairs.dx[e];
    const bool valid = here && g.inside(h2, w2) && g.present(b, h2, w2);
    out(b, e, h, w) = valid ? g.weight(pairs, b, e, h, w) : acc_t(0);
  }
}

// One pixel of the fused solver gradient: g = [not seeded, present] (lam potts_grad + [unlabeled] eta
// dH/dy), handed to store(k, g_k); adds the pixel's share of the energy (its unary and lam w P of the pairs
// that start at it) to energy.  operand, unlabeled and seeded are contiguous; i = h * W + w.
template <int R, int U, int KMAX, typename scalar_t, typename Labels, typename Store>
POTTS_DEVICE void solver_gradient_pixel(const DeviceGrid<scalar_t>& g, const Labels& labels,
                                      const PairTable<scalar_t>& pairs, const scalar_t* __restrict__ operand,
                                      const bool* __restrict__ unlabeled, const bool* __restrict__ seeded,
                                      scalar_t eta, scalar_t lam, scalar_t unary_eps, int64_t b, int64_t i,
                                      Store&& store, scalar_t& energy) {
  const int64_t n = g.H * g.W, h = i / g.W, w = i % g.W, base = b * g.K * n + i;
  const bool here = g.present(b, h, w), unl = unlabeled[b * n + i], seed = seeded[b * n + i];
  const typename Labels::Pixel p = labels.at(b, h, w);
  scalar_t dot = 0, sum_y = 0;
  if (unl) {
    for (int64_t k = 0; k < g.K; ++k) {
      const scalar_t y = labels(p, k), o = operand[base + k * n];
      dot += unary_dot_term<U, scalar_t>(o, y, o, unary_eps);
      sum_y += y;
    }
    energy += eta * unary_value<U, scalar_t>(dot, sum_y, scalar_t(0), unary_eps);
  }
  const scalar_t a = here ? g.norm(labels, p) : scalar_t(0);
  for (int64_t c0 = 0; c0 < g.K; c0 += KMAX) {
    scalar_t acc[KMAX], self = 0;
    if (here) {
      potts_gradient_chunk<R, KMAX, scalar_t>(g, labels, pairs, b, h, w, p, c0, lam, a, acc, self, &energy, nullptr);
    } else {
POTTS_UNROLL
      for (int k = 0; k < KMAX; ++k) acc[k] = 0;
    }
POTTS_UNROLL
    for (int k = 0; k < KMAX; ++k) {
      if (c0 + k >= g.K) continue;
      const scalar_t y = labels(p, c0 + k), o = operand[base + (c0 + k) * n];
      scalar_t gk = acc[k] + self * y;
      if (unl) gk += eta * unary_grad_label<U, scalar_t>(o, y, o, dot, scalar_t(0), unary_eps);
      store(c0 + k, seed || !here ? scalar_t(0) : gk);
    }
  }
}

// Runs body with the register width KMAX (a compile-time constant) for K classes.
template <typename Body>
void dispatch_kmax(int64_t K, Body&& body) {
  if (K <= 4) {
    body(std::integral_constant<int, 4>{});
  } else if (K <= 16) {
    body(std::integral_constant<int, 16>{});
  } else if (K <= 32) {
    body(std::integral_constant<int, 32>{});
  } else {
    body(std::integral_constant<int, 64>{});
  }
}

// Runs body(r, u, kmax) with the relaxation, the unary and the register width KMAX for K classes as
// compile-time constants (std::integral_constant), for the solver kernels.
template <typename Body>
void dispatch_solver(int relaxation, int64_t kind, int64_t K, Body&& body) {
  POTTS_DISPATCH_RELAXATION(relaxation, [&] {
    POTTS_DISPATCH_UNARY(kind, [&] {
      dispatch_kmax(K, [&](auto kmax) { body(std::integral_constant<int, R>{}, std::integral_constant<int, U>{}, kmax); });
    });
  });
}

// The largest launch (grid_solver.cu's gradient kernel: the grid in double, the table's pointers, the
// other pointers and scalars) within the 4 KB of parameters every CUDA version allows.
constexpr size_t kLargestGridKernelParameters =
    sizeof(DeviceGrid<double>) + sizeof(PairTable<double>) + 10 * sizeof(double);
static_assert(kLargestGridKernelParameters <= 4096, "the grid kernels' parameters pass CUDA's 4 KB");

}  // namespace pottsops
