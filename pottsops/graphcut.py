"""α-expansion (Boykov, Veksler & Zabih 2001) for the discrete Potts problem, through the GCO library of
Veksler & Delong (PyPI `gco-wrapper`, the optional extra `pottsops[graphcut]`).

The bilinear relaxation with the ce unary attains its minimum over the simplex at a discrete labelling, so
its minimisation is the discrete Potts problem

    E(l) = eta sum_{i not in S, mask} U_i(l_i)  +  lam sum_{{i,j} in N} w_ij [l_i != l_j],

U_i(k) = H(e_k, sigma_i), which graph cuts solve far better than local methods (docs/solver.md).  The
weights are potts_energy's (pottsops.affinity, or the given weights), scribbles are hard constraints and
masked-out pixels take part in no term.  GCO works in integers: the costs are scaled so that the largest
term is 2^20, or less where a scribbled pixel's pairs together would pass GCO's largest term (1e7), and
rounded.  Where that rounding cannot resolve the unary (its mean range over the unlabeled pixels below
MIN_UNARY_UNITS integer units: pair weights about 1e4 times the unary or more, as with lam 1e12 or weights
scaled by 1e30), the pairs heavier than a labelling's energy, which no better labelling cuts, are clamped to
it and the image solved again (_solve_image); where even that leaves the unary unresolved (a pair far
heavier than the unary must be cut), alpha_expansion raises ResolutionError, a ValueError naming eta, lam
and weights, and solve() runs mirror descent instead (SolveInfo.note says so).  The returned labels' energy
is evaluated by the caller in floating point.

GCO reports errors by throwing C++ exceptions, which through ctypes would abort the process: its functions
are called from pottsops' C++ module (csrc/cpu/graphcut.cpp), which turns them into RuntimeError, and the
inputs it refuses (no pixels, one label) are handled before it is called.

The wrapper bundles the GCO C++ code, whose authors set their own terms of use (research purposes; see
the GCO-v3.0 distribution): check them before using this method.
"""
import concurrent.futures
import ctypes
import functools
import importlib

import numpy as np
import torch
import torch.nn.functional as F

from pottsops import _checks, _extension, reference
from pottsops.names import unary_name
from pottsops.neighborhoods import as_neighborhood

EXTRA = "pip install 'pottsops[graphcut]' (or pip install gco-wrapper)"
SCALE = float(2 ** 20)  # the largest unary or pair cost, in GCO's integer units
MAX_TERM = 10_000_000  # GCO_MAX_ENERGYTERM: GCO refuses a larger data or smooth cost
MIN_UNARY_UNITS = 100.0  # the unary's mean range, in integer units, below which the rounding drops it (1 %)
MAX_CLAMPS = 3  # solves with the heavy pairs clamped, where the unary is not resolved (_solve_image)
# GCO's C functions, called in this order by pottsops' C++ module (csrc/cpu/graphcut.cpp)
GCO_FUNCTIONS = ("gcoCreateGeneralGraph", "gcoDestroyGraph", "gcoSetDataCost", "gcoSetAllNeighbors",
                 "gcoSetSmoothCost", "gcoInitLabelAtSite", "gcoExpansion", "gcoGetLabels")


class ResolutionError(ValueError):
    """GCO's integer costs cannot resolve the unary of this problem (module docstring)."""


@functools.lru_cache(maxsize=None)
def available():
    """None if the graph-cut library can be imported and pottsops' C++ module (which calls it) is loaded, else
    why not (asked once per process: solve() asks at every call for the bilinear relaxation)."""
    try:
        importlib.import_module("gco")
    except ImportError as error:
        return f"the graph-cut library is not installed ({error}): {EXTRA}"
    if not _extension.ensure("cpu"):
        return f"pottsops' C++ module, which calls GCO, is not loaded: {_extension.STATUS['cpu'].reason}"
    return None


def _gco():
    """The C++ module's gco_expansion with GCO's function addresses bound."""
    reason = available()
    if reason:
        raise ImportError(f"alpha_expansion needs the GCO library: {reason}")
    import gco
    library = gco.cgco._cgco
    addresses = [ctypes.cast(getattr(library, name), ctypes.c_void_p).value for name in GCO_FUNCTIONS]
    return functools.partial(_extension.STATUS["cpu"].module.gco_expansion, addresses)


def unary_costs(logits, unary, eps=1e-8):
    """(B, K, H, W) float64: H(e_k, softmax(logits)) for each one-hot label e_k."""
    log_sigma = torch.log_softmax(logits.double(), 1)
    if unary == "ce":
        return -log_sigma
    sigma = log_sigma.exp()
    if unary == "cce":
        return -torch.log(sigma + eps)
    # rce at a one-hot label: -sum_{j != k} sigma_j log(eps) - sigma_k log(1 + eps)
    return -(1 - sigma) * np.log(eps) - sigma * np.log1p(eps)


def pair_weights(image, neighborhood, sigma_rgb, sigma_xy, mask, weights, shape):
    """(B, E, H, W) float64 edge weights of potts_energy, zero where a pair does not exist or touches a
    masked-out pixel."""
    from pottsops.potts import affinity  # a layer up; imported here to keep the import graph acyclic
    B, _, H, W = shape
    if weights is None:
        if image is None:  # constant weights: the spatial factors alone
            image = torch.zeros(B, 1, H, W, dtype=torch.float64)
            sigma_rgb = 1.0
        return affinity(image.double(), neighborhood, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, mask=mask,
                        backend="reference").double()
    present = torch.ones(B, H, W, dtype=torch.bool) if mask is None else mask
    out = torch.zeros(weights.shape, dtype=torch.float64)
    for e, (dy, dx) in enumerate(neighborhood.offsets):
        first, second = reference.pair_slices(H, W, dy, dx)
        out[:, e, first[0], first[1]] = torch.where(reference.pair_valid(present, first, second),
                                                    weights[:, e, first[0], first[1]].double(), 0.0)
    return out


def _edges(pair_w, offsets, H, W):
    """(sites a, sites b, weights) of the pairs with a positive weight, a < b, for one image."""
    a_all, b_all, w_all = [], [], []
    index = np.arange(H * W, dtype=np.int64).reshape(H, W)
    for e, (dy, dx) in enumerate(offsets):
        w = pair_w[e]
        rows, cols = np.nonzero(w > 0)
        a = index[rows, cols]
        b = (rows + dy) * W + (cols + dx)
        a_all.append(np.minimum(a, b))
        b_all.append(np.maximum(a, b))
        w_all.append(w[rows, cols])
    return np.concatenate(a_all), np.concatenate(b_all), np.concatenate(w_all)


def alpha_expansion(logits, image, seeds, *, unary="ce", neighborhood="nn4", eta=0.3, lam=6.0, sigma_rgb=9.0,
                    sigma_xy=None, mask=None, weights=None, init=None, ignore_index=255, iters=-1, threads=None):
    """One-hot labels y (B, K, H, W), in logits' dtype, from α-expansion on the discrete Potts problem
    eta sum H(e_{l_i}, softmax(logits)_i) + lam sum w_ij [l_i != l_j] (module docstring), scribbles fixed.

    Arguments as in solve() (grid and window neighbourhoods); init: labels (B, K, H, W) whose argmax starts
    the moves (default argmax(logits)); iters: expansion cycles over all labels, -1 until no move lowers the
    energy; threads: images solved in parallel (default: the cores torch uses).  Masked-out pixels get
    argmax(logits).  An empty batch or image gives an empty result.  A problem
    whose unary GCO's integer costs cannot resolve (module docstring) raises ResolutionError, a ValueError.
    Needs the optional `gco-wrapper` package (pottsops[graphcut]).

    >>> y = pottsops.graphcut.alpha_expansion(logits, image, seeds, eta=0.3, lam=6.0)
    """
    gco = _gco()
    # a masked-out pixel takes part in no term: whatever the image holds there
    _checks.check_pseudo_label_inputs(logits, image, seeds, mask, ignore_index, weights, image_where=mask)
    unary = unary_name(unary, "unary")
    for name, value in (("eta", eta), ("lam", lam)):
        _checks.check_number(name, value)
    neighborhood = as_neighborhood(neighborhood, dense=False)
    if weights is not None:
        _checks.check_like("weights", weights, (logits.shape[0], neighborhood.num_offsets, *logits.shape[2:]),
                           f"one channel per offset of {neighborhood}")
    if init is not None:
        _checks.check_like("init", init, logits.shape, "the shape of logits")
        _checks.check_finite("init", init)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < -1:
        raise ValueError(f"iters: expected an integer >= -1 (-1: until convergence), got {iters!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads: expected a number of threads >= 1, or None for the cores torch uses, got "
                         f"{threads!r}")
    return labels(gco, logits, image, seeds, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights, init,
                  ignore_index, iters, threads).to(logits.dtype)


def labels(gco, logits, image, seeds, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights, init,
           ignore_index, iters=-1, threads=None):
    """alpha_expansion's work on arguments already checked (solve() checks them once, then calls this);
    gco: _gco()'s function, unary a name, neighborhood a Neighborhood.  Labels in the accumulation dtype."""
    B, K, H, W = logits.shape
    dtype = reference.accumulation_dtype(logits.dtype)
    device = logits.device
    if B * H * W == 0:  # nothing to cut (GCO refuses a graph without sites; K >= 2 is checked)
        return torch.zeros(B, K, H, W, dtype=dtype, device=device)
    logits, seeds = logits.detach().cpu(), seeds.cpu()
    mask_cpu = None if mask is None else mask.cpu()
    seeded = (seeds != ignore_index) if mask_cpu is None else (seeds != ignore_index) & mask_cpu
    present = torch.ones(B, H, W, dtype=torch.bool) if mask_cpu is None else mask_cpu
    unlabeled = present & ~seeded
    costs = eta * unary_costs(logits, unary)
    costs = costs - costs.amin(1, keepdim=True)  # a per-pixel constant changes no labelling
    costs = torch.where(unlabeled[:, None], costs, 0.0)
    pair_w = lam * pair_weights(None if image is None else image.detach().cpu(), neighborhood, sigma_rgb, sigma_xy,
                                mask_cpu, None if weights is None else weights.detach().cpu(), (B, K, H, W))
    # max(1).indices, not argmax(1): the same labels (the first largest), and on the CPU argmax over the class
    # dimension took 14 ms for 12 x 4 x 96^2 (max: 0.2 ms), a tenth of the whole alpha-expansion
    start = (logits if init is None else init.detach().cpu()).max(1).indices
    start = torch.where(seeded, seeds.long(), start).reshape(B, H * W).to(torch.int32)
    costs, pair_w, seeded_np, unlabeled_np = costs.numpy(), pair_w.numpy(), seeded.numpy(), unlabeled.numpy()
    seeds_np = seeds.long().numpy()
    edges = [_edges(pair_w[b], neighborhood.offsets, H, W) for b in range(B)]

    def run(b):
        return _solve_image(gco, costs[b], edges[b], seeded_np[b], unlabeled_np[b], seeds_np[b],
                            start[b].contiguous(), neighborhood, iters)
    workers = threads or max(1, torch.get_num_threads())
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, B)) as pool:
        found = list(pool.map(run, range(B)))
    found = torch.stack(found).long().view(B, H, W)
    found = torch.where(present, found, logits.max(1).indices)
    return F.one_hot(found, K).permute(0, 3, 1, 2).to(dtype=dtype, device=device).contiguous()


def _solve_image(gco, costs, edges, seeded, unlabeled, seeds, start, neighborhood, iters):
    """Labels (N,) int32 of one image.  Where the integer costs cannot resolve the unary (pairs far heavier
    than it), the heavy pairs are clamped: a pair heavier than the energy E of a feasible labelling is cut
    by no labelling below E, so clamping it to E changes no such labelling's energy and keeps the minimiser.
    The first solve (unary unresolved) gives that labelling and E; each solve lowers E (kept in floating
    point against the true weights), at most MAX_CLAMPS times."""
    a, bb, w = edges  # the pairs with their true weights: every labelling's energy is evaluated on them
    K = costs.shape[0]
    flat = costs.reshape(K, -1)
    weights, best, best_energy = w, None, np.inf
    for _ in range(MAX_CLAMPS + 1):
        c, integer_edges, units = _integer_problem(costs, (a, bb, weights), seeded, unlabeled, seeds, neighborhood)
        found = gco(*(torch.from_numpy(x) for x in (c, *integer_edges)), start, iters)
        ids = found.numpy().astype(np.int64)
        energy = float(flat[ids, np.arange(ids.size)].sum() + (w * (ids[a] != ids[bb])).sum())
        if energy < best_energy:
            best, best_energy = found, energy
        if units >= MIN_UNARY_UNITS:
            return best
        weights = np.minimum(w, best_energy * (1 + 1e-6))
        start = best
    raise ResolutionError(
        f"eta, lam, weights: GCO's integer costs cannot resolve this problem's unary even with the pairs "
        f"heavier than its energy ({best_energy:.3g}) clamped: the unary's mean range is {units:.3g} integer "
        f"units, at least {MIN_UNARY_UNITS:g} needed (some pair much heavier than the unary must be cut); "
        f"scale eta and lam (or the weights) closer together, or use solve(method='mirror_descent')")


def _integer_problem(costs, edges, seeded, unlabeled, seeds, neighborhood):
    """GCO's integer costs (N, K) and edges (a, b, w) of one image (costs (K, H, W), edges: _edges' pairs with
    their float weights), and the unary's mean range over the unlabeled pixels in integer units (inf where
    there is no unary)."""
    K, H, W = costs.shape
    a, bb, w = edges
    largest = max(float(costs.max(initial=0.0)), float(w.max(initial=0.0)), 1e-300)
    # A scribble's wrong labels cost its pixel's pairs together (below), which with a window can pass GCO's
    # largest term: the scale keeps that sum, rounded up, within it.
    incident = np.bincount(a, weights=w, minlength=H * W) + np.bincount(bb, weights=w, minlength=H * W)
    rounding = 2 * len(neighborhood.offsets) + 1  # each pair rounds up by at most 1/2
    scale = min(SCALE / largest, (MAX_TERM - rounding) / max(float(incident.max(initial=0.0)), 1e-300))
    unary_range = float(costs.max(0)[unlabeled].mean()) if unlabeled.any() else 0.0
    units = unary_range * scale if unary_range > 0 else np.inf
    w_int = np.maximum(np.rint(w * scale), 0).astype(np.int32)
    keep = w_int > 0
    a, bb, w_int = a[keep].astype(np.int32), bb[keep].astype(np.int32), w_int[keep]
    c = np.rint(costs.reshape(K, -1).T * scale)
    # A scribble is a hard constraint: any other label costs more than all of the pixel's pairs together.
    incident = np.bincount(a, weights=w_int, minlength=H * W) + np.bincount(bb, weights=w_int, minlength=H * W)
    fixed = seeded.reshape(-1)
    c[fixed] = (incident[fixed] + 1)[:, None]
    c[fixed, seeds.reshape(-1)[fixed]] = 0
    return np.ascontiguousarray(c.astype(np.int32)), (a, bb, w_int), units
