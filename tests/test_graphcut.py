"""α-expansion (pottsops.graphcut, through the optional GCO library) against brute force on tiny images: equal
to the exact minimum on two labels (where a graph cut is exact) and within α-expansion's factor-2 bound on
three; scribbles kept, masks honoured, batches in threads; solve()'s method choice and the missing-library
paths."""
import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pottsops
from pottsops import graphcut

pytestmark = pytest.mark.skipif(graphcut.available() is not None,
                                reason=f"the graph-cut extra is not installed: {graphcut.available()}")
ETA, LAM, SIGMA = 0.3, 6.0, 40.0


def energy(y, logits, image, seeds, neighborhood, unary="ce", mask=None):
    """Per image, in float64 through the reference ops."""
    free = (seeds == 255) if mask is None else mask & (seeds == 255)
    u = pottsops.unary(logits.double(), y.double(), unary, mask=free, reduction="none", backend="reference")
    p = pottsops.potts_energy(y.double(), image.double(), relaxation="bilinear", neighborhood=neighborhood,
                              sigma_rgb=SIGMA, mask=mask, reduction="none", backend="reference")
    return ETA * u.sum((1, 2)) + LAM * p


def brute_force(logits, image, seeds, neighborhood, mask=None):
    """The lowest energy over every labelling of the free pixels of image 0, and the unary's lower bound."""
    K, H, W = logits.shape[1:]
    free = [(i, j) for i in range(H) for j in range(W) if seeds[0, i, j] == 255 and (mask is None or mask[0, i, j])]
    labellings = []
    for labels in itertools.product(range(K), repeat=len(free)):
        lab = torch.where(seeds[0] == 255, 0, seeds[0]).clone()
        for (i, j), k in zip(free, labels):
            lab[i, j] = k
        labellings.append(lab)
    y = F.one_hot(torch.stack(labellings).long(), K).permute(0, 3, 1, 2).double()
    n = len(labellings)
    energies = energy(y, logits.expand(n, -1, -1, -1), image.expand(n, -1, -1, -1), seeds.expand(n, -1, -1),
                      neighborhood, mask=None if mask is None else mask.expand(n, -1, -1))
    unlabeled = (seeds[0] == 255) if mask is None else mask[0] & (seeds[0] == 255)
    lower = ETA * (-torch.log_softmax(logits[0].double(), 0).amax(0))[unlabeled].sum()
    return float(energies.min()), float(lower)


def tiny_problem(K, seed, H=3, W=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, K, H, W, generator=g) * 1.5
    image = torch.rand(1, 3, H, W, generator=g) * 60  # colours close enough that the pairs matter
    seeds = torch.full((1, H, W), 255)
    seeds[0, 0, 0], seeds[0, H - 1, W - 1] = 0, K - 1
    return logits, image, seeds


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
@pytest.mark.parametrize("seed", range(6))
def test_two_labels_are_exact(neighborhood, seed):
    logits, image, seeds = tiny_problem(2, seed)
    y = graphcut.alpha_expansion(logits, image, seeds, eta=ETA, lam=LAM, sigma_rgb=SIGMA, neighborhood=neighborhood)
    best, _ = brute_force(logits, image, seeds, neighborhood)
    assert float(energy(y, logits, image, seeds, neighborhood)) == pytest.approx(best, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8", pottsops.window(1)], ids=["nn4", "nn8", "win1"])
@pytest.mark.parametrize("seed", range(4))
def test_three_labels_are_within_the_factor_two_bound(neighborhood, seed):
    """E_α - L <= 2 (E* - L) for the Potts model (Boykov, Veksler & Zabih), L the unary's lower bound."""
    logits, image, seeds = tiny_problem(3, seed, H=3, W=3)
    y = graphcut.alpha_expansion(logits, image, seeds, eta=ETA, lam=LAM, sigma_rgb=SIGMA, neighborhood=neighborhood)
    best, lower = brute_force(logits, image, seeds, neighborhood)
    found = float(energy(y, logits, image, seeds, neighborhood))
    assert best - 1e-9 <= found <= lower + 2 * (best - lower) + 1e-9


def test_scribbles_masks_weights_and_threads():
    """Scribbles are kept; a masked-out pixel takes part in no term (brute force with the mask); the given
    weights (affinity's) give the labels the image gives; the images of a batch solved in parallel threads
    give what each gives alone."""
    logits, image, seeds = tiny_problem(2, 7)
    mask = torch.ones(1, 3, 4, dtype=torch.bool)
    mask[0, 1, 2] = False
    image[0, :, 1, 2] = float("nan")  # whatever a masked pixel holds
    y = graphcut.alpha_expansion(logits, image, seeds, eta=ETA, lam=LAM, sigma_rgb=SIGMA, mask=mask)
    assert torch.equal(y.argmax(1)[seeds != 255], seeds[seeds != 255])
    best, _ = brute_force(logits, torch.nan_to_num(image), seeds, "nn4", mask)
    assert float(energy(y, logits, torch.nan_to_num(image), seeds, "nn4", mask=mask)) == pytest.approx(best, rel=1e-6)
    g = torch.Generator().manual_seed(3)
    logits, image = torch.randn(4, 5, 20, 23, generator=g), torch.rand(4, 3, 20, 23, generator=g) * 255
    seeds = torch.full((4, 20, 23), 255)
    seeds[:, 2:4, 2:18] = torch.arange(4)[:, None, None]
    seeds[:, 15:17, 5:20] = 4
    together = graphcut.alpha_expansion(logits, image, seeds, threads=2)
    weights = pottsops.affinity(image, "nn4", sigma_rgb=9.0)
    assert torch.equal(graphcut.alpha_expansion(logits, None, seeds, weights=weights, threads=1), together)
    for b in range(4):
        assert torch.equal(graphcut.alpha_expansion(logits[b:b + 1], image[b:b + 1], seeds[b:b + 1]), together[b:b + 1])


def test_scribbles_in_a_window_neighbourhood_do_not_abort_the_process():
    """A scribble's wrong labels cost all its pixel's pairs together, which in window(2, dilation=2) (24
    pairs at GCO's largest pair cost) passed GCO's largest term: GCO printed "danger of integer overflow" and
    aborted the process (found by the fuzz suite: solve(levels=3) on a constant image).  Now the costs are
    scaled within it: run in a subprocess, the labels keep the scribbles."""
    code = ("import torch, pottsops\n"
            "g = torch.Generator().manual_seed(0)\n"
            "logits, image = torch.randn(2, 3, 17, 11, generator=g) * 15, torch.full((2, 1, 17, 11), 128.0)\n"
            "seeds = torch.full((2, 17, 11), 255)\n"
            "seeds[:, 3, 2:9], seeds[:, 12, 2:9] = 0, 2\n"
            "for nb in (pottsops.window(2, dilation=2), pottsops.window(5)):\n"
            "    y = pottsops.graphcut.alpha_expansion(logits, image, seeds, unary='cce', neighborhood=nb, lam=60.0)\n"
            "    assert torch.equal(y.argmax(1)[seeds != 255], seeds[seeds != 255])\n"
            "print('ok')\n")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0 and process.stdout.strip() == "ok", process.stderr[-2000:]


def energy_of(y, logits, image, seeds, unary):
    """solve()'s energy at its defaults (eta 0.3, lam 6, sigma_rgb 9, nn4), per image."""
    free = seeds == 255
    u = pottsops.unary(logits.double(), y.double(), unary, mask=free, reduction="none", backend="reference")
    return 0.3 * u.sum((1, 2)) + 6.0 * pottsops.potts_energy(y.double(), image.double(), relaxation="bilinear",
                                                             reduction="none", backend="reference")


def test_solve_uses_alpha_expansion_for_bilinear():
    """solve(bl, ce) picks α-expansion by default: its labels, at an energy the local method does not reach;
    solve(bl, cce) polishes α-expansion's labels."""
    g = torch.Generator().manual_seed(5)
    logits, image = torch.zeros(2, 4, 24, 30), torch.rand(2, 3, 24, 30, generator=g) * 255
    seeds = torch.full((2, 24, 30), 255)
    for k in range(4):
        seeds[:, 3 + 5 * k, 4:26] = k
    kwargs = dict(relaxation="bilinear", unary="ce", return_info=True)
    y, info = pottsops.solve(logits, image, seeds, **kwargs)
    assert torch.equal(y, graphcut.alpha_expansion(logits, image, seeds, eta=0.3, lam=6.0))
    local, local_info = pottsops.solve(logits, image, seeds, method="mirror_descent", **kwargs)
    assert (info.best <= local_info.best).all() and info.iterations.eq(0).all()
    y, info = pottsops.solve(logits.double(), image.double(), seeds, relaxation="bilinear", unary="cce",
                             return_info=True)  # α-expansion's labels polished: never above them
    labels = graphcut.alpha_expansion(logits.double(), image, seeds, unary="cce")
    assert (info.best <= energy_of(labels, logits, image, seeds, "cce") + 1e-9).all()
    local = pottsops.solve(logits.double(), image.double(), seeds, relaxation="bilinear", unary="cce",
                           return_info=True, method="mirror_descent")[1]
    assert (info.best <= local.best * (1 + 1e-12)).all()
    with pytest.raises(ValueError, match="method: 'alpha_expansion' solves the bilinear relaxation"):
        pottsops.solve(logits, image, seeds, relaxation="q", method="alpha_expansion")
    with pytest.raises(ValueError, match="method: expected one of"):
        pottsops.solve(logits, image, seeds, method="graphcut")


def test_without_the_library_an_error_names_the_extra_and_solve_warns(monkeypatch):
    monkeypatch.setattr(graphcut, "available", lambda: "the graph-cut library is not installed: " + graphcut.EXTRA)
    logits, image, seeds = tiny_problem(3, 0)
    with pytest.raises(ImportError, match=r"pottsops\[graphcut\]"):
        graphcut.alpha_expansion(logits, image, seeds)
    from pottsops.solver import _WARNED
    _WARNED.discard("graphcut")
    with pytest.warns(RuntimeWarning, match=r"pottsops\[graphcut\]"):
        y = pottsops.solve(logits, image, seeds, relaxation="bilinear", unary="ce")
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8", pottsops.window(2)], ids=["nn4", "nn8", "win2"])
def test_given_weights_are_masked_as_the_image_weights_are(neighborhood):
    """Given weights and a mask: the pairs graph cuts see are affinity's with that mask."""
    from pottsops.neighborhoods import as_neighborhood
    g = torch.Generator().manual_seed(0)
    image, mask = torch.rand(2, 3, 9, 11, generator=g) * 255, torch.rand(2, 9, 11, generator=g) > 0.3
    nb = as_neighborhood(neighborhood)
    given = pottsops.affinity(image.double(), nb, backend="reference")
    expected = pottsops.affinity(image.double(), nb, mask=mask, backend="reference")
    assert torch.equal(graphcut.pair_weights(None, nb, 9.0, None, mask, given, (2, 3, 9, 11)), expected)


def _subprocess_ok(code):
    process = subprocess.run([sys.executable, "-c", code + "\nprint('ok')\n"], capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0 and process.stdout.strip().endswith("ok"), \
        (process.returncode, process.stdout[-1000:], process.stderr[-2000:])
    return process


def test_empty_images_and_batches_give_empty_labels_in_a_subprocess():
    """GCO throws "Number of sites must be >= 1" for an image of no pixels, which through ctypes aborted the
    process (SIGABRT); an empty batch failed in numpy's reshape.  Now each gives an empty result, as mirror
    descent does, through alpha_expansion, solve() and SoftSelfLabelingLoss."""
    _subprocess_ok(
        "import torch, pottsops\n"
        "from pottsops import graphcut\n"
        "for B, H, W in ((1, 0, 5), (1, 4, 0), (0, 4, 5), (0, 0, 0)):\n"
        "    logits, image = torch.randn(B, 3, H, W), torch.rand(B, 3, H, W) * 255\n"
        "    seeds = torch.full((B, H, W), 255)\n"
        "    for y in (graphcut.alpha_expansion(logits, image, seeds),\n"
        "              pottsops.solve(logits, image, seeds, relaxation='bl', unary='ce'),\n"
        "              pottsops.solve(logits, image, seeds, relaxation='bl', unary='ce', method='alpha_expansion')):\n"
        "        assert y.shape == (B, 3, H, W), y.shape\n"
        "    loss = pottsops.nn.SoftSelfLabelingLoss(relaxation='bl', unary='ce')(logits.requires_grad_(), image, seeds)\n"
        "    assert float(loss) == 0.0\n")


def test_an_exception_gco_throws_is_a_python_error_in_a_subprocess():
    """Whatever GCO throws (here: a graph without sites, which the public functions never build) becomes a
    RuntimeError from pottsops' C++ module, never std::terminate."""
    _subprocess_ok(
        "import torch, pytest\n"
        "from pottsops import graphcut\n"
        "expand = graphcut._gco()\n"
        "empty = torch.zeros(0, dtype=torch.int32)\n"
        "with pytest.raises(RuntimeError, match='alpha_expansion: GCO stopped'):\n"
        "    expand(torch.zeros(0, 3, dtype=torch.int32), empty, empty, empty, empty, -1)\n"
        "with pytest.raises(RuntimeError, match='alpha_expansion: GCO stopped'):\n"
        "    expand(torch.zeros(4, 1, dtype=torch.int32), empty, empty, empty, torch.zeros(4, dtype=torch.int32), -1)\n"
        "labels = expand(torch.tensor([[0, 5], [5, 0]], dtype=torch.int32), torch.tensor([0], dtype=torch.int32),\n"
        "                torch.tensor([1], dtype=torch.int32), torch.tensor([1], dtype=torch.int32),\n"
        "                torch.zeros(2, dtype=torch.int32), -1)\n"
        "assert labels.tolist() == [0, 1]\n")


def _two_regions(eta=1.0, seed=0):
    """3 x 4, K = 2: two colour regions whose pairs inside weigh 1 and across 1e-12 (at sigma_rgb 9), so that
    at lam 1e12 the pairs inside dwarf the unary and the pairs across match it."""
    g = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, 3, 3, 4, dtype=torch.float64)
    image[..., 2:] = 38.7
    return torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64) * 2, image, torch.full((1, 3, 4), 255)


def _exact(logits, image, seeds, **kwargs):
    """The lowest energy over all 2^12 labellings, by solve()'s own energy at iters = 0 from each one-hot."""
    labellings = torch.tensor(list(itertools.product(range(2), repeat=12))).view(-1, 3, 4)
    y = F.one_hot(labellings, 2).permute(0, 3, 1, 2).double()
    n = len(y)
    many = lambda t: None if t is None else t.expand(n, *t.shape[1:])  # noqa: E731
    kwargs = {k: many(v) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    info = pottsops.solve(many(logits), many(image), many(seeds), relaxation="bl", unary="ce", init=y, iters=0,
                          method="mirror_descent", return_info=True, **kwargs)[1]
    return float(info.energies[0].min())


@pytest.mark.parametrize("kwargs", [dict(lam=1e12), dict(lam=1e12, eta=1e-12), dict(lam=6.0, weights_factor=1e30)],
                         ids=["lam1e12", "eta1e-12-lam1e12", "weights1e30"])
@pytest.mark.parametrize("seed", range(3))
def test_pairs_far_heavier_than_the_unary_do_not_drop_it(kwargs, seed):
    """GCO's integer costs rounded a unary below about 1e-6 of the largest pair cost to 0: solve() returned
    3.453 where the minimum was 1.312 (lam 1e12), 1.8e-3 against 7.6e-12 (eta 1e-12).  Now the pairs heavier
    than a labelling's energy are clamped to it: the exact minimum, by brute force, on two labels."""
    logits, image, seeds = _two_regions(seed=seed)
    kwargs = dict(kwargs)
    factor = kwargs.pop("weights_factor", None)
    if factor is not None:
        kwargs["weights"] = pottsops.affinity(image, "nn4", sigma_rgb=9.0) * factor
        image = None
    exact = _exact(logits, image, seeds, **kwargs)
    y, info = pottsops.solve(logits, image, seeds, relaxation="bl", unary="ce", return_info=True, **kwargs)
    assert info.method == "alpha_expansion"
    assert float(info.best) == pytest.approx(exact, rel=1e-9, abs=1e-300)
    direct = graphcut.alpha_expansion(logits, image, seeds, **kwargs)
    assert torch.equal(direct, y)


def test_a_unary_no_clamp_can_resolve_is_refused_and_solve_says_it_ran_mirror_descent():
    """Scribbles of two classes on a uniform image at lam 1e12: some pair of weight 1e12 must be cut, so no
    clamp helps and the unary stays below GCO's resolution.  alpha_expansion refuses by name; solve() runs
    mirror descent and says so in info.note."""
    g = torch.Generator().manual_seed(1)
    logits, image = torch.randn(1, 2, 5, 6, generator=g), torch.full((1, 1, 5, 6), 100.0)
    seeds = torch.full((1, 5, 6), 255)
    seeds[0, 0, 0], seeds[0, 4, 5] = 0, 1
    with pytest.raises(graphcut.ResolutionError, match="eta, lam, weights: GCO's integer costs cannot resolve"):
        graphcut.alpha_expansion(logits, image, seeds, lam=1e12)
    with pytest.warns(RuntimeWarning, match="mirror descent ran instead"):
        from pottsops.solver import _WARNED
        _WARNED.discard("resolution")
        y, info = pottsops.solve(logits, image, seeds, relaxation="bl", unary="ce", lam=1e12, return_info=True)
    assert info.method == "mirror_descent" and "mirror descent ran instead of alpha_expansion" in info.note
    assert torch.isfinite(y).all() and torch.equal(y.argmax(1)[seeds != 255], seeds[seeds != 255])
    info = pottsops.solve(logits, image, seeds, relaxation="bl", unary="ce", return_info=True)[1]
    assert info.method == "alpha_expansion" and "ignores iters, lr and levels" in info.note


@pytest.mark.parametrize("threads", [-1, 0, "2", 2.5, True])
def test_threads_must_be_a_positive_integer(threads):
    logits, image, seeds = tiny_problem(3, 0)
    with pytest.raises(ValueError, match="threads: expected a number of threads >= 1"):
        graphcut.alpha_expansion(logits, image, seeds, threads=threads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_labels_come_in_the_logits_dtype(dtype):
    logits, image, seeds = tiny_problem(3, 0)
    y = graphcut.alpha_expansion(logits.to(dtype), image, seeds)
    assert y.dtype == dtype and torch.equal(y.double().sum(1), torch.ones(1, 3, 4, dtype=torch.float64))
