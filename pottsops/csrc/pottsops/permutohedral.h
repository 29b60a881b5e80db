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

#include "pottsops/relaxations.h"  // POTTS_HD

namespace pottsops {

constexpr int kMaxLatticeDim = 16;  // d = 2 positions + up to 14 features

// Scale of feature i before lifting: the lift is an isometry times inv_std, and inv_std = sqrt(2/3)(d+1)
// makes the lattice's blur approximate a Gaussian of unit standard deviation in feature units (ibid.).
POTTS_HD double lattice_feature_scale(int i, int d) {
  return std::sqrt(2.0 / 3.0) * (d + 1) / std::sqrt(double(i + 1) * double(i + 2));
}

// Vertices (keys, (d+1) x d) and barycentric weights (d+1) of the simplex enclosing `position` (d values,
// already divided by their sigma).
template <typename Position>
POTTS_HD void enclosing_simplex(const Position& position, int d, int32_t* keys, double* weights) {
  double elevated[kMaxLatticeDim + 1];
  int32_t rem0[kMaxLatticeDim + 1];
  int rank[kMaxLatticeDim + 1];
  double barycentric[kMaxLatticeDim + 2];
  // Lift: elevated = E (scaled position), E with orthogonal columns (1, .., 1, -(i+1), 0, ..) / |.|.
  double tail = 0;
  for (int i = d; i > 0; --i) {
    const double scaled = position(i - 1) * lattice_feature_scale(i - 1, d);
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
  // Rank of each coordinate's residual (0 = largest), then move the excess to make it a lattice point.
  for (int i = 0; i <= d; ++i) rank[i] = 0;
  for (int i = 0; i < d; ++i) {
    for (int j = i + 1; j <= d; ++j) {
      if (elevated[i] - rem0[i] < elevated[j] - rem0[j]) {
        ++rank[i];
      } else {
        ++rank[j];
      }
    }
  }
  if (sum > 0) {
    for (int i = 0; i <= d; ++i) {
      if (rank[i] >= d + 1 - sum) {
        rank[i] -= d + 1 - sum;
        rem0[i] -= d + 1;
      } else {
        rank[i] += sum;
      }
    }
  } else if (sum < 0) {
    for (int i = 0; i <= d; ++i) {
      if (rank[i] < -sum) {
        rank[i] += d + 1 + sum;
        rem0[i] += d + 1;
      } else {
        rank[i] += sum;
      }
    }
  }
  for (int i = 0; i <= d + 1; ++i) barycentric[i] = 0;
  for (int i = 0; i <= d; ++i) {
    const double v = (elevated[i] - rem0[i]) * inv;
    barycentric[d - rank[i]] += v;
    barycentric[d - rank[i] + 1] -= v;
  }
  barycentric[0] += 1.0 + barycentric[d + 1];
  // Vertex r of the simplex: rem0 plus the canonical offset r (coordinate i gets r, or r - (d+1) once
  // its rank is past d - r).
  for (int r = 0; r <= d; ++r) {
    for (int i = 0; i < d; ++i) keys[r * d + i] = rem0[i] + (rank[i] <= d - r ? r : r - (d + 1));
    weights[r] = barycentric[r];
  }
}

// Key of the neighbour of `key` along direction j (0..d): +u_j if plus, -u_j otherwise.
POTTS_HD void lattice_neighbor(const int32_t* key, int d, int j, bool plus, int32_t* out) {
  const int32_t step = plus ? 1 : -1;
  for (int i = 0; i < d; ++i) out[i] = key[i] + (i == j ? -step * d : step);
}

POTTS_HD uint64_t lattice_hash(const int32_t* key, int d) {
  uint64_t h = 0;
  for (int i = 0; i < d; ++i) h = (h + static_cast<uint32_t>(key[i])) * 2531011ull;
  return h ^ (h >> 29);
}

}  // namespace pottsops
