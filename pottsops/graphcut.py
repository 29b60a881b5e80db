"""α-expansion (Boykov, Veksler & Zabih 2001) for the discrete Potts problem, through the GCO library of
Veksler & Delong (PyPI `gco-wrapper`, the optional extra `pottsops[graphcut]`).

The bilinear relaxation with the ce unary attains its minimum over the simplex at a discrete labelling, so
its minimisation is the discrete Potts problem

    E(l) = eta sum_{i not in S, mask} U_i(l_i)  +  lam sum_{{i,j} in N} w_ij [l_i != l_j],

U_i(k) = H(e_k, sigma_i), which graph cuts solve far better than local methods (docs/solver.md).  The
weights are potts_energy's (pottsops.affinity, or the given weights), scribbles are hard constraints and
masked-out pixels take part in no term.  GCO works in integers: the costs are scaled so that the largest
term is 2^20, or less where a scribbled pixel's pairs together would pass GCO's largest term (1e7, past
which GCO aborts the process), and rounded (a relative resolution of about 1e-6 of the largest term); the
returned labels' energy is evaluated by the caller in floating point.

The wrapper bundles the GCO C++ code, whose authors set their own terms of use (research purposes; see
the GCO-v3.0 distribution): check them before using this method.
"""
import concurrent.futures
import functools
import importlib
import threading

import numpy as np
import torch
import torch.nn.functional as F

from pottsops import _checks, reference
from pottsops.names import unary_name
from pottsops.neighborhoods import as_neighborhood

EXTRA = "pip install 'pottsops[graphcut]' (or pip install gco-wrapper)"
SCALE = float(2 ** 20)  # the largest unary or pair cost, in GCO's integer units
MAX_TERM = 10_000_000  # GCO_MAX_ENERGYTERM: a larger data or smooth cost makes GCO abort the process
# GCO keeps its graphs in a process-wide std::map without a lock: graphs are created and destroyed by one
# thread at a time (this lock), and only expansions (map lookups) run in parallel.
_GCO_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def available():
    """None if the graph-cut library can be imported, else why not (asked once per process: solve() asks at
    every call for the bilinear relaxation)."""
    try:
        importlib.import_module("gco")
    except ImportError as error:
        return f"the graph-cut library is not installed ({error}): {EXTRA}"
    return None


def _gco():
    reason = available()
    if reason:
        raise ImportError(f"alpha_expansion needs the GCO library: {reason}")
    import gco
    return gco


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


def _expand_one(gco, handle, costs, edges, start, iters):
    """One image on an existing GCO graph: costs (N, K) int32, edges (a, b, w int32), start labels (N,)."""
    cg = gco.cgco._cgco
    cg.gcoSetDataCost(handle, costs)
    a, b, w = edges
    if len(a):
        cg.gcoSetAllNeighbors(handle, a, b, w, np.intc(a.size))
    K = costs.shape[1]
    smooth = np.ascontiguousarray((1 - np.eye(K)).astype(np.intc))
    cg.gcoSetSmoothCost(handle, smooth)
    for site in np.flatnonzero(start):  # GCO starts at label 0
        cg.gcoInitLabelAtSite(handle, np.intc(site), np.intc(start[site]))
    energy = np.empty(1, dtype=np.longlong)
    cg.gcoExpansion(handle, np.intc(iters), energy)
    labels = np.empty(costs.shape[0], dtype=np.intc)
    cg.gcoGetLabels(handle, labels)
    return labels


def alpha_expansion(logits, image, seeds, *, unary="ce", neighborhood="nn4", eta=0.3, lam=6.0, sigma_rgb=9.0,
                    sigma_xy=None, mask=None, weights=None, init=None, ignore_index=255, iters=-1, threads=None):
    """One-hot labels y (B, K, H, W), in logits' float dtype, from α-expansion on the discrete Potts problem
    eta sum H(e_{l_i}, softmax(logits)_i) + lam sum w_ij [l_i != l_j] (module docstring), scribbles fixed.

    Arguments as in solve() (grid and window neighbourhoods); init: labels (B, K, H, W) whose argmax starts
    the moves (default argmax(logits)); iters: expansion cycles over all labels, -1 until no move lowers the
    energy; threads: images solved in parallel (default: the cores torch uses).  Masked-out pixels get
    argmax(logits).  Needs the optional `gco-wrapper` package (pottsops[graphcut]).

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
    return labels(gco, logits, image, seeds, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights, init,
                  ignore_index, iters, threads)


def labels(gco, logits, image, seeds, unary, neighborhood, eta, lam, sigma_rgb, sigma_xy, mask, weights, init,
           ignore_index, iters=-1, threads=None):
    """alpha_expansion's work on arguments already checked (solve() checks them once, then calls this);
    gco: the imported library, unary a name, neighborhood a Neighborhood."""
    B, K, H, W = logits.shape
    dtype = reference.accumulation_dtype(logits.dtype)
    device = logits.device
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
    start = (logits if init is None else init.detach().cpu()).argmax(1)
    start = torch.where(seeded, seeds.long(), start).numpy().reshape(B, -1).astype(np.intc)
    costs, pair_w, seeded_np = costs.numpy(), pair_w.numpy(), seeded.numpy()
    seeds_np = seeds.long().numpy()

    def problem(b):
        """Integer costs and edges of image b."""
        a, bb, w = _edges(pair_w[b], neighborhood.offsets, H, W)
        largest = max(float(costs[b].max(initial=0.0)), float(pair_w[b].max(initial=0.0)), 1e-300)
        # A scribble's wrong labels cost its pixel's pairs together (below), which with a window can pass
        # GCO's largest term (GCO then aborts the process): the scale keeps that sum, rounded up, within it.
        incident = np.bincount(a, weights=w, minlength=H * W) + np.bincount(bb, weights=w, minlength=H * W)
        rounding = 2 * len(neighborhood.offsets) + 1  # each pair rounds up by at most 1/2
        scale = min(SCALE / largest, (MAX_TERM - rounding) / max(float(incident.max(initial=0.0)), 1e-300))
        w_int = np.maximum(np.rint(w * scale), 0).astype(np.intc)
        keep = w_int > 0
        a, bb, w_int = a[keep].astype(np.intc), bb[keep].astype(np.intc), w_int[keep]
        c = np.rint(costs[b].reshape(K, -1).T * scale)
        # A scribble is a hard constraint: any other label costs more than all of the pixel's pairs together.
        incident = np.bincount(a, weights=w_int, minlength=H * W) + np.bincount(bb, weights=w_int, minlength=H * W)
        fixed = seeded_np[b].reshape(-1)
        wrong = incident[fixed] + 1
        c[fixed] = wrong[:, None]
        c[fixed, seeds_np[b].reshape(-1)[fixed]] = 0
        return np.ascontiguousarray(c.astype(np.intc)), (a, bb, w_int)

    workers = threads or max(1, torch.get_num_threads())
    with _GCO_LOCK:
        cg = gco.cgco._cgco
        handles = []
        try:
            for _ in range(B):
                handle = np.empty(1, dtype=np.intc)
                cg.gcoCreateGeneralGraph(np.intc(H * W), np.intc(K), handle)
                handles.append(int(handle[0]))

            def run(b):
                c, edges = problem(b)
                return _expand_one(gco, handles[b], c, edges, start[b], iters)
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, max(B, 1))) as pool:
                found = list(pool.map(run, range(B)))
        finally:
            for handle in handles:
                cg.gcoDestroyGraph(np.intc(handle))
    found = torch.from_numpy(np.stack(found).astype(np.int64)).view(B, H, W) if B else seeds.long()
    found = torch.where(present, found, logits.argmax(1))
    return F.one_hot(found, K).permute(0, 3, 1, 2).to(dtype=dtype, device=device).contiguous()
