"""Pseudo-labels from scribbles alone on CamVid val: which relaxation gives the best argmax(y)?

    python -m experiments.solver_camvid --out experiments/results/solver_camvid   (data: POTTSOPS_DATA)

All 101 val images at half resolution (240x180) with ratio-1.0 scribbles, uniform sigma (zero logits: the
scribbles alone), nn4, lam 6, sigma_rgb 9, cce.  For each relaxation: the mIoU of argmax(y) after
solve()'s defaults and after a long run (iters 2000 per level, tol 0: converged, so that the ranking is
that of the relaxations' minima, not of a solver stopped early), the energy above the unary's lower bound
(summed over the images) and the time; and scikit-image's random walker on the same seeds.  The
time-to-quality of the solver itself is benchmarks/solver_quality.py's.

Writes mious.csv and report.md under --out.
"""
import argparse
import csv
import os
import time

import numpy as np
import torch

import pottsops
from benchmarks.solver_problems import load

K = 11


def confusion(pred, label, k=K):
    valid = label != 255
    return torch.bincount(label[valid] * k + pred[valid], minlength=k * k).view(k, k)


def miou(matrix):
    """(mean IoU over the classes that occur, IoU per class)."""
    matrix = matrix.double()
    iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag()).clamp(min=1)
    present = matrix.sum(1) > 0
    return float(iou[present].mean()), iou


def solve_all(images, labels, seeds, batch, **kwargs):
    """(mIoU of argmax(y), energy above the unary's bound summed over the images, seconds)."""
    matrix, excess, seconds = torch.zeros(K, K, dtype=torch.long), 0.0, 0.0
    for start in range(0, len(images), batch):
        rows = slice(start, start + batch)
        logits = torch.zeros(len(images[rows]), K, *images.shape[2:])
        y, info = pottsops.solve(logits, images[rows], seeds[rows], return_info=True, **kwargs)
        matrix += confusion(y.argmax(1), labels[rows])
        excess += float((info.best - info.lower).sum())
        seconds += info.seconds
    return miou(matrix)[0], excess, seconds


def random_walker(images, labels, seeds, beta):
    from skimage.segmentation import random_walker as walker
    matrix = torch.zeros(K, K, dtype=torch.long)
    for image, label, seed in zip(images, labels, seeds):
        markers = np.where(seed.numpy() == 255, 0, seed.numpy() + 1)
        out = walker(image.permute(1, 2, 0).numpy() / 255.0, markers, beta=beta, mode="cg_j", channel_axis=-1)
        matrix += confusion(torch.from_numpy(out.astype(np.int64) - 1), label)
    return miou(matrix)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="experiments/results/solver_camvid")
    parser.add_argument("--limit", type=int, default=None, help="use N val images, evenly spaced")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    items = load("camvid", args.limit)  # the data folder: POTTSOPS_DATA, default ../shared/data
    images, labels, seeds = (torch.stack(column) for column in list(zip(*items))[1:])
    print(f"CamVid val: {len(images)} images at {images.shape[3]}x{images.shape[2]}, "
          f"{float((seeds != 255).float().mean()) * 100:.1f} % of pixels scribbled", flush=True)
    rows = []
    for relaxation in pottsops.RELAXATIONS:
        for run, kwargs in (("defaults", {}), ("long run", dict(iters=2000, tol=0.0))):
            score, excess, seconds = solve_all(images, labels, seeds, args.batch, relaxation=relaxation, **kwargs)
            rows.append({"method": f"solve {relaxation}", "run": run, "miou": f"{score:.4f}",
                         "excess": f"{excess:.1f}", "seconds": f"{seconds:.1f}"})
            print(rows[-1], flush=True)
    for beta in (30, 130):
        start = time.perf_counter()
        score = random_walker(images, labels, seeds, beta)
        rows.append({"method": f"random walker beta={beta}", "run": "cg_j", "miou": f"{score:.4f}", "excess": "",
                     "seconds": f"{time.perf_counter() - start:.1f}"})
        print(rows[-1], flush=True)
    with open(os.path.join(args.out, "mious.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "run", "miou", "excess", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# Pseudo-labels from scribbles alone on CamVid val ({len(images)} images, {images.shape[3]}x"
             f"{images.shape[2]}, scribbles ratio 1.0)", "",
             f"Produced by `python -m experiments.solver_camvid` on {torch.get_num_threads()} CPU threads, torch "
             f"{torch.__version__}.  Zero logits, nn4, lam 6, sigma_rgb 9, cce; excess: the energy above the "
             "unary's lower bound (here the Potts energy), summed over the images.", "",
             "| method | run | mIoU of argmax(y) | excess | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['run']} | {r['miou']} | {r['excess'] or '–'} | {r['seconds']} |" for r in rows]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
