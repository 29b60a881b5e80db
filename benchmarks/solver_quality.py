"""Time to quality of pottsops.solve() on real images: how fast the energy gets close to the lowest known,
and how good argmax(y) is (benchmarks/solver_problems.py defines the problems, starts and gaps).

    python -m benchmarks.solver_quality --out benchmarks/results/solver-quality
        [--datasets camvid acdc] [--neighborhoods nn4 nn8 win2] [--images 24] [--baseline-images 3]
        [--methods solve levels=0] [--label NAME] [--long-runs] [--device cuda] [--full-size]

For every image, start (zero, noisy), relaxation with cce (and cd with ce and rce) and neighbourhood:

1. E*, the lowest energy known (best_energies.csv.gz, kept between runs with how it was found): two long runs
   of solve() (iters 2000 per level, tol 0, with and without coarse levels), the exact minimiser where one exists
   (quadratic, zero logits: a harmonic labelling), α-expansion run to convergence for bilinear + ce (the
   discrete Potts problem), and every run below; all energies through the reference ops in float64.  Each
   E* is tagged in the report: independent (α-expansion, the harmonic solve), certified (the quadratic
   relaxation: a run's Frank-Wolfe gap bounds E* - E_min) or the solver's own.  The long runs are made
   where no E* is cached, or for every problem with
   --long-runs (after a change to the solver, so that E* is the lowest the current one reaches too).
2. Each method (solve() with its defaults, and variants) is run once per image with 2 threads, checked
   (finite, simplex, seeds, energy not above the start's) and timed.  Its gap after each full-resolution
   step comes from the solver's trace (shifted so that its last value is the reference energy of the
   returned y), at the time that step ended (coarse levels' time, then equal time per full-resolution
   step, as measured per level).
3. Baselines: on the first --baseline-images images, the plain loop a user would write (Adam, lr 0.1, on
   pseudo-logits, 300 steps, energy through autograd over the reference ops, best iterate kept); on every
   image (once per dataset), scikit-image's random walker (mode cg_j, its beta set to give the same pair
   weights as sigma_rgb: walker_beta) for the labels' quality
   (--baseline-images 0: no baselines, e.g. to measure another version of pottsops beside these rows).

Writes runs.csv.gz (one row per image and method), curves.csv.gz (median gap against steps and seconds per
configuration and method, of the latest run of each), best_energies.csv.gz, report.md and curves.png under
--out.  Needs scikit-image.
"""
import argparse
import csv
import math
import os
import statistics
import time

import numpy as np
import torch

import pottsops
from benchmarks import harness
from benchmarks.solver_problems import (DATASETS, STARTS, Problem, exact_quadratic, improve_best, load, read_best,
                                        write_best)

CONFIGS = [("bl", "cce"), ("q", "cce"), ("nq", "cce"), ("cce", "cce"), ("lq", "cce"), ("cd", "cce"), ("cd", "ce"),
           ("cd", "rce"), ("bl", "ce")]
METHODS = {"solve": {}, "levels=0": {"levels": 0}, "levels=3": {"levels": 3},
           "mirror_descent": {"method": "mirror_descent"}, "alpha_expansion": {"method": "alpha_expansion"}}
# where a method differs from solve()'s default: the methods of bilinear (the others run mirror descent)
ONLY_FOR = {"mirror_descent": ("bl",), "alpha_expansion": ("bl",)}
GRAPH_CUT = "alpha-expansion (GCO)"  # the found_by of E* from α-expansion: a reference solve() did not produce
LONG_RUNS = {"long levels=3": dict(iters=2000, tol=0.0, levels=3), "long levels=0": dict(iters=2000, tol=0.0, levels=0)}
PLAIN_ADAM = "plain adam x300"
WALKER = "random walker"
THRESHOLDS = (1e-2, 1e-3)
ITERATION_GRID = list(range(0, 3001, 10))
TIME_GRID = [round(10 ** (e / 10), 4) for e in range(-30, 11)]  # 1 ms .. 10 s
RUN_FIELDS = ["dataset", "image", "start", "relaxation", "unary", "neighborhood", "method", "label", "seconds",
              "iterations", "energy", "lower", "start_energy", "best", "gap", "seconds_to_1e-2", "seconds_to_1e-3",
              "steps_to_1e-2",
              "steps_to_1e-3", "check", "class_counts"]


DEVICE = torch.device("cpu")  # where solve() and the plain loop run (--device); energies are checked on the CPU


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed_solve(problem, **kwargs):
    """(y, seconds, curve [(seconds, full-resolution step, solver's energy)]) of one solve() on DEVICE."""
    inputs = [t.to(DEVICE) for t in (problem.logits, problem.image, problem.seeds)]
    synchronize()
    start = time.perf_counter()
    y, info = pottsops.solve(*inputs, return_info=True, **dict(problem.kwargs, **kwargs))
    synchronize()
    seconds = time.perf_counter() - start
    y = y.cpu()
    certificate = getattr(info, "certificate", None)
    if certificate is not None:  # a convex problem: E_min >= E(y) - certificate (float64 energies)
        improve_bound(problem, float(info.best[0]) - float(certificate[0]))
    energies = [float(e) for e in info.energies]
    levels = getattr(info, "levels", None)  # an older pottsops may not report its levels
    coarse = sum(level[2] for level in levels[:-1]) if levels else 0.0
    per_step = (levels[-1][2] if levels else seconds) / max(1, len(energies) - 1)
    return y, seconds, [(coarse + t * per_step, t, e) for t, e in enumerate(energies)]


BOUNDS = {}  # problem key -> the highest certified lower bound on E_min seen in this run


def improve_bound(problem, bound):
    BOUNDS[problem.key] = max(BOUNDS.get(problem.key, -math.inf), bound)


def plain_adam(problem, iters=300, lr=0.1):
    """The solver a user would write with autograd: Adam on pseudo-logits v (y = softmax(v), seeds clamped),
    the energy of the reference ops, the best iterate kept."""
    synchronize()
    start = time.perf_counter()
    logits, image = problem.logits.to(DEVICE), problem.image.to(DEVICE)
    sigma = torch.softmax(logits, 1)
    one_hot = problem.start_labels().to(DEVICE)
    seeded = problem.seeded[:, None].to(DEVICE)
    kwargs = {k: v for k, v in problem.kwargs.items() if k in ("relaxation", "neighborhood", "sigma_rgb")}

    def energy(v):
        y = torch.where(seeded, one_hot, torch.softmax(v, 1))
        unary = pottsops.unary(logits, y, problem.unary, mask=~seeded[:, 0], reduction="sum", backend="reference")
        return problem.kwargs["eta"] * unary + problem.kwargs["lam"] * pottsops.potts_energy(
            y, image, backend="reference", **kwargs), y

    v = torch.log(sigma).requires_grad_()
    optimizer = torch.optim.Adam([v], lr=lr)
    best, best_y, curve = math.inf, one_hot, []
    for t in range(iters + 1):
        optimizer.zero_grad()
        value, y = energy(v)
        if value.item() < best:
            best, best_y = value.item(), y.detach()
        curve.append((time.perf_counter() - start, t, best))
        if t < iters:
            value.backward()
            optimizer.step()
    return best_y.cpu(), time.perf_counter() - start, curve


def walker_beta(image, sigma_rgb):
    """scikit-image's random walker weighs a pair exp(-beta |dI|^2 / (10 std(I) sqrt(C))) on the image it is
    given (here I / 255); pottsops' affinity is exp(-|dI_255|^2 / (2 sigma_rgb^2)): the beta that makes the two
    the same weights, so that the comparison is of methods, not of bandwidths."""
    channels = image.shape[-1]
    return 10 * float(image.std()) * math.sqrt(channels) * 255.0 ** 2 / (2 * sigma_rgb ** 2)


def graph_cut(problem):
    """(labels, seconds, curve) of pottsops.graphcut.alpha_expansion alone (on the CPU: GCO), the reference
    for bilinear + ce."""
    start = time.perf_counter()
    y = pottsops.graphcut.alpha_expansion(problem.logits, problem.image, problem.seeds, unary=problem.unary,
                                          neighborhood=problem.neighborhood, eta=problem.kwargs["eta"],
                                          lam=problem.kwargs["lam"], sigma_rgb=problem.kwargs["sigma_rgb"])
    seconds = time.perf_counter() - start
    return y, seconds, [(seconds, 0, problem.energy(y))]


def random_walker(problem):
    from skimage.segmentation import random_walker as walker
    start = time.perf_counter()
    seeds = problem.seeds[0].numpy()
    markers = np.where(seeds == 255, 0, seeds + 1)
    image = problem.image[0].permute(1, 2, 0).numpy() / 255.0
    beta = walker_beta(image, problem.kwargs["sigma_rgb"])
    labels = walker(image, markers, beta=beta, mode="cg_j", channel_axis=-1) - 1
    y = torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), problem.logits.shape[1])
    return y.permute(2, 0, 1)[None].float(), time.perf_counter() - start


def class_counts(y, labels, classes):
    """The labels' true positives, false positives and false negatives per class against the ground truth, as
    one line of 3 x classes integers (what mIoU and Dice pooled over images need; the whole confusion matrix
    took most of runs.csv.gz)."""
    valid = labels != 255
    pred, truth = y[0].argmax(0)[valid], labels[valid]
    tp = torch.bincount(truth[pred == truth], minlength=classes)
    fp = torch.bincount(pred, minlength=classes) - tp
    fn = torch.bincount(truth, minlength=classes) - tp
    return " ".join(map(str, torch.cat([tp, fp, fn]).tolist()))


def gaps(problem, curve, final_energy, best):
    """[(seconds, step, gap)] with the solver's energies shifted onto the reference energy of its result."""
    shift = final_energy - curve[-1][2]
    return [(s, t, max(0.0, problem.gap(e + shift, best))) for s, t, e in curve]


def first_reached(points, threshold):
    """(seconds, step) of the first point with gap <= threshold, or None."""
    return next(((s, t) for s, t, g in points if g <= threshold), None)


def sample(points, grid, column):
    """The gap at each grid value of column (0: seconds, 1: steps): the last point at or before it."""
    out, i = [], 0
    for x in grid:
        while i + 1 < len(points) and points[i + 1][column] <= x:
            i += 1
        out.append(points[i][2] if points[0][column] <= x else math.nan)
    return out


def run_config(images, dataset, start, relaxation, unary, neighborhood, args, best):
    """Every method on every image of one configuration: rows for runs.csv and the per-image gap curves."""
    rows, curves = [], {}
    for index, (name, image, labels, seeds) in enumerate(images):
        problem = Problem(dataset, name, image, labels, seeds, start, index, relaxation, unary, neighborhood)
        results = {}
        if (relaxation, unary) == ("bl", "ce"):  # the discrete Potts problem: α-expansion run to convergence
            results[GRAPH_CUT] = graph_cut(problem)
            improve_best(best, problem, results[GRAPH_CUT][2][-1][2], GRAPH_CUT, independent=True)
        elif problem.key not in best or args.long_runs:
            for method, kwargs in LONG_RUNS.items():
                y, _, _ = timed_solve(problem, **kwargs)
                improve_best(best, problem, problem.energy(y), f"{method} @{args.label}")
            exact = exact_quadratic(problem)
            if exact is not None:
                improve_best(best, problem, problem.energy(exact), "exact harmonic")
        results.update({method: timed_solve(problem, **kwargs) for method, kwargs in args.methods.items()
                        if relaxation in ONLY_FOR.get(method, (relaxation,))
                        and not (method == "alpha_expansion" and unary != "ce")})
        if index < args.baseline_images:
            results[PLAIN_ADAM] = plain_adam(problem)
        for method, (y, _, _) in results.items():
            improve_best(best, problem, problem.energy(y), f"{method} @{args.label}")
        lowest = float(best[problem.key]["energy"])
        if problem.key in BOUNDS:  # a certified lower bound from this run's solves, kept if the highest yet
            known = float(best[problem.key].get("bound") or -math.inf)
            best[problem.key]["bound"] = repr(max(BOUNDS[problem.key], known))
        classes = DATASETS[dataset]["classes"]
        for method, (y, seconds, curve) in results.items():
            energy = problem.energy(y)
            points = gaps(problem, curve, energy, lowest)
            reached = [first_reached(points, threshold) for threshold in THRESHOLDS]
            curves.setdefault(method, []).append(points)
            rows.append(dict(zip(RUN_FIELDS, (*problem.key, method, args.label, f"{seconds:.4f}", len(curve) - 1,
                                              repr(energy), repr(problem.lower), repr(problem.start_energy),
                                              repr(lowest),
                                              f"{problem.gap(energy, lowest):.3e}",
                                              *(f"{r[0]:.4f}" if r else "" for r in reached),
                                              *(str(r[1]) if r else "" for r in reached), problem.check(y),
                                              class_counts(y, labels, classes)))))
        walker = args.baseline_images > 0 and neighborhood == args.neighborhoods[0]
        if walker and start == "zero" and (relaxation, unary) == CONFIGS[0]:
            y, seconds = random_walker(problem)
            rows.append(dict(zip(RUN_FIELDS, (*problem.key, WALKER, args.label, f"{seconds:.4f}", 0, *[""] * 10,
                                              class_counts(y, labels, classes)))))
    return rows, curves


def curve_rows(key, curves):
    """Median gap over the images against steps and seconds, per method."""
    rows = []
    for method, per_image in curves.items():
        for column, grid in ((1, ITERATION_GRID), (0, TIME_GRID)):
            sampled = [sample(points, grid, column) for points in per_image]
            for i, x in enumerate(grid):
                values = [s[i] for s in sampled if not math.isnan(s[i])]
                if len(values) == len(sampled) and (column == 0 or any(x <= p[-1][1] for p in per_image)):
                    rows.append(dict(zip(CURVE_FIELDS, (*key, method, "steps" if column else "seconds", x,
                                                        f"{statistics.median(values):.3e}"))))
    return rows


CURVE_FIELDS = ["dataset", "start", "relaxation", "unary", "neighborhood", "method", "axis", "x", "median_gap"]


def replace_curves(path, key, rows):
    """curves.csv with the rows of configuration key replaced: the curves are the latest run's."""
    kept = []
    if os.path.exists(path):
        with harness.open_text(path) as f:
            kept = [r for r in csv.DictReader(f) if tuple(r[k] for k in CURVE_FIELDS[:5]) != key]
    with harness.open_text(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(kept + rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/solver-quality")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--neighborhoods", nargs="+", default=["nn4", "nn8", "win2"], choices=["nn4", "nn8", "win2"])
    parser.add_argument("--configs", nargs="+", default=[f"{r}+{u}" for r, u in CONFIGS])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--baseline-images", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--label", default=None, help="names the code measured (default: the git commit)")
    parser.add_argument("--long-runs", action="store_true", help="make the long runs where E* is cached too")
    parser.add_argument("--device", default="cpu", help="where solve() and the plain loop run (cuda on a GPU)")
    parser.add_argument("--full-size", action="store_true", help="CamVid at 480x360 instead of half resolution")
    args = parser.parse_args(argv)
    args.methods = {m: METHODS[m] for m in args.methods}
    args.label = args.label or harness.git_sha()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    best_path = os.path.join(args.out, "best_energies.csv.gz")
    runs_path = os.path.join(args.out, "runs.csv.gz")
    best = read_best(best_path)
    done = set()
    if os.path.exists(runs_path):
        with harness.open_text(runs_path) as f:
            done = {(r["dataset"], r["start"], r["relaxation"], r["unary"], r["neighborhood"], r["label"])
                    for r in csv.DictReader(f)}
    for dataset in args.datasets:
        images = load(dataset, args.images, args.full_size)
        for neighborhood in args.neighborhoods:
            for config in args.configs:
                relaxation, unary = config.split("+")
                for start in STARTS:
                    key = (dataset, start, relaxation, unary, neighborhood)
                    if key + (args.label,) in done:
                        continue
                    began = time.perf_counter()
                    rows, curves = run_config(images, dataset, start, relaxation, unary, neighborhood, args, best)
                    write_best(best_path, best)
                    harness.append_rows(runs_path, RUN_FIELDS, rows)
                    replace_curves(os.path.join(args.out, "curves.csv.gz"), key, curve_rows(key, curves))
                    solved = [r for r in rows if r["method"] == "solve"]
                    print(f"{' '.join(key)}: {time.perf_counter() - began:.0f} s; solve: median gap "
                          f"{statistics.median(float(r['gap']) for r in solved):.1e}, median "
                          f"{statistics.median(float(r['seconds']) for r in solved):.3f} s", flush=True)


if __name__ == "__main__":
    main()
