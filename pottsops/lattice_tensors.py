"""The permutohedral lattice as tensor operations, for any device (the CUDA lattice_build and lattice_filter
ops are these functions).

Same operator as the C++ filter (csrc/cpu/lattice.cpp): alpha S^T C^T C S on the splatted vertices and
their blur vertices (csrc/pottsops/lattice_args.h kLatticeReach), built here with sorting instead of a hash
table:

1. lattice_simplex (a kernel): each pixel's d+1 simplex vertices (keys) and barycentric weights;
2. the splatted vertices = the unique keys (rows packed into int64 and sorted) (with the image index as a
   first coordinate, so one lattice holds the whole batch); every vertex = the unique rows of each splatted
   vertex plus the key offsets of the sets of at most REACH directions; an image whose vertices would pass
   vertex_budget is refused, as the C++ lattice refuses it;
3. the neighbour table: the links between each splatted vertex's sets T and T + {j}, as in the C++ lattice;
4. filtering: splat as a segment sum over the entries sorted by vertex (deterministic), the 2 (d+1) blur
   passes as gathers, the slice as a gather and a weighted sum.

Everything is sorted, never atomically accumulated, so results are bitwise reproducible.
"""
import functools
import math
from dataclasses import dataclass

import torch

from pottsops import reference

REACH = 4  # csrc/pottsops/lattice_args.h kLatticeReach


def vertex_budget(n, d):
    """csrc/pottsops/lattice_args.h lattice_vertex_budget: the most vertices of one image's lattice
    before it is refused."""
    return min(max(16 * n * (d + 1), 1 << 18), 1 << 30)


def lattice_scale(d):
    """alpha of csrc/pottsops/lattice_args.h lattice_scale."""
    return (4.0 * math.pi / 3.0) ** (d / 2.0) * math.sqrt(d + 1.0)


@dataclass
class Lattice:
    d: int
    shape: tuple          # (B, N)
    weights: torch.Tensor  # (B * N * (d+1),) barycentric weight of each entry
    entry_vertex: torch.Tensor  # (B * N * (d+1),) vertex of each entry
    order: torch.Tensor    # entries sorted by vertex (stable)
    offsets: torch.Tensor  # (M + 1,) segment bounds of each vertex in `order`
    neighbors: torch.Tensor  # (M, d+1, 2): minus and plus neighbour along each direction, -1 if absent


@functools.lru_cache(maxsize=None)
def _subsets(d, device):
    """The sets T of at most REACH of the d+1 directions: their key offsets sum_{j in T} minus_j (S, d+1)
    (image coordinate 0; minus_j adds d to coordinate j, -1 to the others) and the links (L, 3): rows
    (index of T, j, index of T + {j}) for each j not in T where T + {j} is a set too."""
    masks = [m for size in range(min(REACH, d + 1) + 1) for m in range(1 << (d + 1)) if bin(m).count("1") == size]
    index = {m: i for i, m in enumerate(masks)}
    minus = torch.full((d + 1, d + 1), -1, dtype=torch.int32)
    minus[:, 0] = 0
    for j in range(d):
        minus[j, 1 + j] = d
    offsets = torch.stack([minus[[j for j in range(d + 1) if m >> j & 1]].sum(0, dtype=torch.int32) for m in masks])
    links = [(index[m], j, index[m | 1 << j]) for m in masks for j in range(d + 1)
             if not m >> j & 1 and (m | 1 << j) in index]
    return offsets.to(device), torch.tensor(links, dtype=torch.int64, device=device).view(-1, 3)


def _unique_rows(rows):
    """torch.unique(rows, dim=0, return_inverse=True) for int32 rows; packed into one int64 per row
    (a much faster 1-D sort) when the columns' ranges fit in 62 bits, as they do for images."""
    lo = rows.min(0).values.to(torch.int64)
    span = rows.max(0).values.to(torch.int64) - lo + 1
    bits = [max(1, int(s - 1).bit_length()) for s in span.tolist()]
    if sum(bits) > 62:
        return torch.unique(rows, dim=0, return_inverse=True)
    shifts = torch.tensor([sum(bits[i + 1:]) for i in range(len(bits))], dtype=torch.int64, device=rows.device)
    packed = ((rows.to(torch.int64) - lo) << shifts).sum(1)
    unique, inverse = torch.unique(packed, return_inverse=True)
    masks = torch.tensor([(1 << b) - 1 for b in bits], dtype=torch.int64, device=rows.device)
    return (((unique[:, None] >> shifts) & masks) + lo).to(torch.int32), inverse


def build(features):
    """The lattice of features (B, d, H, W) (already divided by their sigmas)."""
    B, d = features.shape[:2]
    N = features.shape[2] * features.shape[3]
    if B * N == 0:  # no pixels: a lattice without entries or vertices (the filter of nothing is empty)
        empty = torch.zeros(0, dtype=torch.int64, device=features.device)
        return Lattice(d, (B, N), features.new_zeros(0), empty, empty, torch.zeros(1, dtype=torch.int64,
                       device=features.device), empty.view(0, d + 1, 2))
    keys, weights = torch.ops.pottsops.lattice_simplex(features)
    image = torch.arange(B, device=features.device, dtype=torch.int32).view(B, 1, 1, 1).expand(B, N, d + 1, 1)
    rows = torch.cat([image, keys], 3).view(-1, d + 1)
    splatted, entry_vertex = _unique_rows(rows)
    offsets, links = _subsets(d, features.device)
    vertices, inverse = _unique_rows((splatted[:, None, :] + offsets[None]).view(-1, d + 1))
    counts = torch.bincount(vertices[:, 0].long(), minlength=B)
    over = (counts > vertex_budget(N, d)).nonzero()
    if over.numel():
        b = int(over[0])
        raise RuntimeError(
            f"features: image {b}'s points are too sparse for the lattice: its blur vertices would take more "
            f"than {vertex_budget(N, d)} ({N} pixels, {d} features), and without them it returns a fraction "
            "of the exact sum (sigma_xy or sigma_rgb too small for the image, or noisy colours: use larger "
            "sigmas, fewer channels, or the exact method on small images)")
    index = inverse.view(splatted.shape[0], offsets.shape[0])  # (splatted vertex, set) -> vertex
    entry_vertex = index[:, 0][entry_vertex]
    M = vertices.shape[0]
    neighbors = torch.full((M, d + 1, 2), -1, dtype=torch.int64, device=features.device)
    low, high = index[:, links[:, 0]], index[:, links[:, 2]]  # high = low + minus_j
    direction = links[:, 1].expand_as(low)
    neighbors[low, direction, 0] = high
    neighbors[high, direction, 1] = low
    order = torch.argsort(entry_vertex, stable=True)
    counts = torch.bincount(entry_vertex, minlength=M)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return Lattice(d, (B, N), weights.reshape(-1), entry_vertex, order, offsets, neighbors)


def filter_values(lattice, values):
    """alpha S^T C^T C S values for values (B, C, H, W) on the lattice of their image."""
    B, C, H, W = values.shape
    d = lattice.d
    acc = lattice.weights.dtype
    rows = values.to(acc).flatten(2).transpose(1, 2).reshape(B * H * W, 1, C).expand(-1, d + 1, C).reshape(-1, C)
    rows = rows * lattice.weights[:, None]
    grid = torch.ops.pottsops.segment_sum(rows[lattice.order], lattice.offsets)
    for j in range(d + 1):  # C_0 .. C_d: average with the plus neighbour
        grid = _average(grid, lattice.neighbors[:, j, 1])
    for j in reversed(range(d + 1)):  # C_d^T .. C_0^T: average with the minus neighbour
        grid = _average(grid, lattice.neighbors[:, j, 0])
    sliced = (grid[lattice.entry_vertex] * lattice.weights[:, None]).view(B * H * W, d + 1, C).sum(1)
    out = lattice_scale(d) * sliced
    return reference.narrow(out.view(B, H * W, C).transpose(1, 2).reshape(B, C, H, W), values.dtype)


def _average(grid, neighbor):
    present = (neighbor >= 0)[:, None]
    return 0.5 * (grid + torch.where(present, grid[neighbor.clamp(min=0)], 0))


def build_tensors(features):
    """pottsops::lattice_build on CUDA: the lattice as the list of tensors lattice_filter takes back."""
    lattice = build(features)
    B, N = lattice.shape
    return [lattice.weights.view(B, N, lattice.d + 1), lattice.entry_vertex, lattice.order, lattice.offsets,
            lattice.neighbors]


def filter_tensors(values, tensors):
    """pottsops::lattice_filter on CUDA, its lattice checked first (a wrong index would read out of bounds)."""
    if len(tensors) != 5:
        raise ValueError(f"lattice: expected the 5 tensors lattice_build returns on CUDA, got {len(tensors)}")
    weights, entry_vertex, order, offsets, neighbors = tensors
    B, C, H, W = values.shape
    if weights.dim() != 3 or weights.shape[:2] != (B, H * W) or not weights.is_floating_point():
        raise ValueError(f"lattice[0]: expected floating weights ({B}, {H * W}, d+1), got {tuple(weights.shape)}")
    d, entries = weights.shape[2] - 1, weights.numel()
    M = neighbors.shape[0]
    ok = (entry_vertex.shape == (entries,) and order.shape == (entries,) and offsets.shape == (M + 1,)
          and neighbors.shape == (M, d + 1, 2) and all(t.dtype == torch.int64 for t in tensors[1:]))
    if ok:  # every index checked, also where there are no entries (an index op would read out of bounds)
        ok = bool((offsets[0] == 0) & (offsets[-1] == entries) & (offsets.diff() >= 0).all())
    if ok and entries:
        ok = bool((entry_vertex.min() >= 0) & (entry_vertex.max() < M) & (order.min() >= 0) & (order.max() < entries))
    if ok and neighbors.numel():
        ok = bool((neighbors.min() >= -1) & (neighbors.max() < M))
    if not ok:
        raise ValueError("lattice: expected the tensors lattice_build made for these values (shapes, int64 indices "
                         "inside the lattice)")
    return filter_values(Lattice(d, (B, H * W), weights.reshape(-1), entry_vertex, order, offsets, neighbors), values)


def quadratic_tensors(values, tensors):
    """pottsops::lattice_quadratic on CUDA: the filter and the per-channel forms values . filtered."""
    filtered = filter_tensors(values, tensors)
    acc = reference.accumulation_dtype(values.dtype)
    return filtered, (values.to(acc) * filtered.to(acc)).sum((2, 3))
