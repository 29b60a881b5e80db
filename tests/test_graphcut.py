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
