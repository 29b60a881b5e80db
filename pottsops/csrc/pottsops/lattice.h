// Geometry of the permutohedral lattice (Adams, Baek & Davis, "Fast high-dimensional filtering using the
// permutohedral lattice", 2010), shared by the CPU and CUDA bilateral filters.
//
// A point with d scaled features (positions / sigma_xy, colours / sigma_rgb) is lifted onto the plane
// x . 1 = 0 of R^(d+1), where the lattice is the set of integer points whose coordinates are all congruent
// mod (d+1).  The point lies in one simplex of the lattice; its d+1 vertices and barycentric weights are
// what splat and slice use.  A vertex is keyed by its first d coordinates (the last is minus their sum).
//
// Blur along lattice direction j moves a vertex by u_j = (d+1) e_j - 1: its "plus" neighbour adds 1 to
// every coordinate except j, which loses d; its "minus" neighbour is the opposite.
#pragma once

#include <cmath>
#include <cstdint>

#include "pottsops/device_code.h"  // POTTS_HD

namespace pottsops {

// d = 2 positions + up to 4 image channels.  Beyond that the lattice cannot be accurate in bounded memory:
// on a 24 x 24 image of colours bilinear from a 6 x 6 random one (sigma_xy 10, sigma_rgb 15) it keeps
// 0.97 / 0.94 / 0.89 / 0.80 of the exact filtered mean at 1 / 2 / 3 / 4 channels; the earlier lattice of two
// rings kept 0.59 at 5 and 0.38 at 6 with 450 and 800 vertices per pixel (docs/design.md, "Lattice accuracy").
constexpr int kMaxLatticeDim = 6;

// Scale of feature i before lifting: the lift is an isometry times inv_std, and inv_std = sqrt(2/3)(d+1)
// makes the lattice's blur approximate a Gaussian of unit standard deviation in feature units (ibid.).
POTTS_HD double lattice_feature_scale(int i, int d) {
  return std::sqrt(2.0 / 3.0) * (d + 1) / std::sqrt(double(i + 1) * double(i + 2));
}

// The d scales, once per lattice (a square root and a division each: most of a simplex search if redone).
POTTS_HD void lattice_feature_scales(int d, double* scale) {
  for (int i = 0; i < d; ++i) scale[i] = lattice_feature_scale(i, d);
}

// The simplex enclosing `position` (d values, already divided by their sigma; scale from
// lattice_feature_scales): its remainder-0 point rem0 and the rank of each coordinate's residual (d+1
// each), which together name it, and the barycentric weights of its d+1 vertices.
template <typename Position>
POTTS_HD void enclosing_simplex(const Position& position, int d, const double* scale, int32_t* rem0, int32_t* rank,
                                double* weights) {
  double elevated[kMaxLatticeDim + 1], residual[kMaxLatticeDim + 1];
  double barycentric[kMaxLatticeDim + 2];
  // Lift: elevated = E (scaled position), E with orthogonal columns (1, .., 1, -(i+1), 0, ..) / |.|.
  double tail = 0;
  for (int i = d; i > 0; --i) {
    const double scaled = position(i - 1) * scale[i - 1];
    elevated[i] = tail - i * scaled;
    tail += scaled;
  }
  elevated[0] = tail;
  // Nearest point with all coordinates multiples of d+1 (rounding each), and the sum's excess.
  const double inv = 1.0 / (d + 1);
  int32_t sum = 0;
  for (int i = 0; i <= d; ++i) {
    const double v = elevated[i] * inv;
    const double up = std::ceil(v) * (d + 1), down = std::floor(v) * (d + 1);
    rem0[i] = static_cast<int32_t>(up - elevated[i] < elevated[i] - down ? up : down);
    sum += rem0[i];
  }
  sum /= d + 1;
  // Rank of each coordinate's residual (0 = largest; without branches, which the data would mispredict),
  // then move the excess to make it a lattice point.
  for (int i = 0; i <= d; ++i) {
    rank[i] = 0;
    residual[i] = elevated[i] - rem0[i];
  }
  for (int i = 0; i < d; ++i) {
    for (int j = i + 1; j <= d; ++j) {
      const int smaller = residual[i] < residual[j];
      rank[i] += smaller;
      rank[j] += 1 - smaller;
    }
  }
  if (sum >= 0) {  // the sum largest residuals' coordinates go down by d+1 (selects, not branches)
    for (int i = 0; i <= d; ++i) {
      const bool down = rank[i] >= d + 1 - sum;
      rank[i] += down ? sum - (d + 1) : sum;
      rem0[i] -= down ? d + 1 : 0;
    }
  } else {  // the -sum smallest residuals' coordinates go up by d+1
    for (int i = 0; i <= d; ++i) {
      const bool up = rank[i] < -sum;
      rank[i] += up ? d + 1 + sum : sum;
      rem0[i] += up ? d + 1 : 0;
    }
  }
  for (int i = 0; i <= d + 1; ++i) barycentric[i] = 0;
  for (int i = 0; i <= d; ++i) {
    const double v = (elevated[i] - rem0[i]) * inv;
    barycentric[d - rank[i]] += v;
    barycentric[d - rank[i] + 1] -= v;
  }
  barycentric[0] += 1.0 + barycentric[d + 1];
  for (int r = 0; r <= d; ++r) weights[r] = barycentric[r];
}

// Key (d values) of vertex r (0..d) of the simplex (rem0, rank): rem0 plus the canonical offset r
// (coordinate i gets r, or r - (d+1) once its rank is past d - r).
POTTS_HD void simplex_vertex(const int32_t* rem0, const int32_t* rank, int d, int r, int32_t* key) {
  for (int i = 0; i < d; ++i) key[i] = rem0[i] + (rank[i] <= d - r ? r : r - (d + 1));
}

// Vertices (keys, (d+1) x d) and barycentric weights (d+1) of the simplex enclosing `position`.
template <typename Position>
POTTS_HD void enclosing_simplex(const Position& position, int d, const double* scale, int32_t* keys, double* weights) {
  int32_t rem0[kMaxLatticeDim + 1], rank[kMaxLatticeDim + 1];
  enclosing_simplex(position, d, scale, rem0, rank, weights);
  for (int r = 0; r <= d; ++r) simplex_vertex(rem0, rank, d, r, keys + r * d);
}

// Key of the neighbour of `key` along direction j (0..d): +u_j if plus, -u_j otherwise.
POTTS_HD void lattice_neighbor(const int32_t* key, int d, int j, bool plus, int32_t* out) {
  const int32_t step = plus ? 1 : -1;
  for (int i = 0; i < d; ++i) out[i] = key[i] + (i == j ? -step * d : step);
}

// Hash of a key for the CPU lattice's open-addressing table: a multiply-add over the coordinates, then a
// 64-bit finaliser (MurmurHash3's fmix64) so that the low bits, which pick the slot, depend on every bit
// of every coordinate (small coordinates that differ by multiples of d+1 otherwise cluster).
POTTS_HD uint64_t lattice_hash(const int32_t* key, int d) {
  uint64_t h = 0;
  for (int i = 0; i < d; ++i) h = (h + static_cast<uint32_t>(key[i])) * 0x9E3779B97F4A7C15ull;
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  return h ^ (h >> 33);
}

}  // namespace pottsops
