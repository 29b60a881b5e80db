"""pottsops.solve() on real images: CamVid val at half resolution with ratio-1.0 scribbles.

    python -m experiments.solver_camvid --out experiments/results/solver_camvid [--data ../shared/data]

1. Quality of the pseudo-labels from scribbles alone (uniform sigma): mIoU of argmax(y) per relaxation,
   and of scikit-image's random walker on the same seeds as an outside reference.
2. Which solver settings to use by default: energy reached against time for mirror descent and Adam at
   several step sizes, (a) with uniform sigma and (b) with sigma from a noisy prediction (ground truth
   logits plus Gaussian noise), the energies of each image relative to the lowest any setting found.

Writes mious.csv, curves.csv, curves.png and report.md under --out.
"""
import argparse
import csv
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import pottsops

K = 11
CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"]


def load_camvid(root, split="val", ratio="1.0", scale=0.5, limit=None):
    """(images (N, 3, h, w) float 0..255, labels (N, h, w), seeds (N, h, w)) at `scale` of 480x360:
    images resized with antialiasing, labels and scribbles sampled at the nearest pixel."""
    names = sorted(os.listdir(os.path.join(root, "camvid", "images", split)))[:limit]
    images, labels, seeds = [], [], []
    for name in names:
        stem = os.path.splitext(name)[0]
        image = Image.open(os.path.join(root, "camvid", "images", split, name)).convert("RGB")
        label = Image.open(os.path.join(root, "camvid", "labels", split, stem + ".png"))
        seed = Image.open(os.path.join(root, "camvid", "scribbles", ratio, split, stem + ".png"))
        size = (round(image.width * scale), round(image.height * scale))
        images.append(np.asarray(image.resize(size, Image.BILINEAR, reducing_gap=None), dtype=np.float32))
        labels.append(np.asarray(label.resize(size, Image.NEAREST)))
        seeds.append(np.asarray(seed.resize(size, Image.NEAREST)))
    to = lambda arrays: torch.from_numpy(np.stack(arrays))  # noqa: E731
    return to(images).permute(0, 3, 1, 2).contiguous(), to(labels).long(), to(seeds).long()


def confusion(pred, label, k=K):
    valid = label != 255
    return torch.bincount(label[valid] * k + pred[valid], minlength=k * k).view(k, k)


def miou(matrix):
    matrix = matrix.double()
    iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag()).clamp(min=1)
    present = matrix.sum(1) > 0
    return float(iou[present].mean()), iou


def solve_batches(images, seeds, logits_fn, batch, **kwargs):
    """argmax of the solved y for every image, and the summed solver time."""
    preds, seconds = [], 0.0
    for start in range(0, len(images), batch):
        rows = slice(start, start + batch)
        logits = logits_fn(rows)
        y, info = pottsops.solve(logits, images[rows], seeds[rows], return_info=True, **kwargs)
        preds.append(y.argmax(1))
        seconds += info.seconds
    return torch.cat(preds), seconds


def random_walker(images, seeds, beta):
    from skimage.segmentation import random_walker as walker
    preds = []
    for image, seed in zip(images, seeds):
        markers = np.where(seed.numpy() == 255, 0, seed.numpy() + 1)
        out = walker(image.permute(1, 2, 0).numpy() / 255.0, markers, beta=beta, mode="cg_j", channel_axis=-1)
        preds.append(torch.from_numpy(out.astype(np.int64) - 1))
    return torch.stack(preds)


def noisy_logits(labels, generator, noise=2.0):
    """Logits of a noisy prediction: 3 * one-hot(ground truth) + N(0, noise^2) (void pixels: noise only)."""
    one_hot = F.one_hot(labels.clamp(max=K - 1), K).permute(0, 3, 1, 2).float() * (labels != 255)[:, None]
    return 3.0 * one_hot + noise * torch.randn(one_hot.shape, generator=generator)


def energy_curves(images, seeds, logits, settings, iters, relaxation="cd"):
    """For each setting, (seconds, energy) after each iteration, energies summed over the images."""
    curves = {}
    for name, kwargs in settings.items():
        y, info = pottsops.solve(logits, images, seeds, relaxation=relaxation, iters=iters, tol=0.0,
                                 return_info=True, **kwargs)
        per_iteration = info.seconds / max(1, len(info.energies) - 1)
        curves[name] = [(t * per_iteration, float(e.sum())) for t, e in enumerate(info.energies)]
    return curves


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("POTTSOPS_DATA", "../shared/data"))
    parser.add_argument("--out", default="experiments/results/solver_camvid")
    parser.add_argument("--limit", type=int, default=None, help="use the first N val images")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    images, labels, seeds = load_camvid(args.data, limit=args.limit)
    print(f"CamVid val: {len(images)} images at {images.shape[3]}x{images.shape[2]}, "
          f"{float((seeds != 255).float().mean()) * 100:.1f} % of pixels scribbled", flush=True)
    uniform = lambda rows: torch.zeros(len(images[rows]), K, *images.shape[2:])  # noqa: E731

    rows = []
    for relaxation in pottsops.RELAXATIONS:
        pred, seconds = solve_batches(images, seeds, uniform, args.batch, relaxation=relaxation, iters=args.iters)
        score, _ = miou(confusion(pred, labels))
        rows.append({"method": f"solve {relaxation}", "miou": f"{score:.4f}", "seconds": f"{seconds:.1f}"})
        print(rows[-1], flush=True)
    for beta in (30, 130):
        start = time.perf_counter()
        pred = random_walker(images, seeds, beta)
        score, _ = miou(confusion(pred, labels))
        rows.append({"method": f"random walker beta={beta}", "miou": f"{score:.4f}",
                     "seconds": f"{time.perf_counter() - start:.1f}"})
        print(rows[-1], flush=True)
    with open(os.path.join(args.out, "mious.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "miou", "seconds"])
        writer.writeheader()
        writer.writerows(rows)

    settings = {f"mirror step={s:g}": dict(method="mirror", step=s) for s in (0.3, 1.0, 3.0)}
    settings.update({f"adam lr={s:g}": dict(method="adam", step=s) for s in (0.03, 0.1, 0.3)})
    subset = slice(0, min(8, len(images)))
    generator = torch.Generator().manual_seed(0)
    scenarios = {"uniform sigma": torch.zeros(subset.stop, K, *images.shape[2:]),
                 "noisy prediction": noisy_logits(labels[subset], generator)}
    curve_rows = []
    for scenario, logits in scenarios.items():
        curves = energy_curves(images[subset], seeds[subset], logits, settings, args.iters)
        for name, points in curves.items():
            curve_rows += [{"scenario": scenario, "setting": name, "iteration": t, "seconds": f"{s:.4f}",
                            "energy": f"{e:.3f}"} for t, (s, e) in enumerate(points)]
    with open(os.path.join(args.out, "curves.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["scenario", "setting", "iteration", "seconds", "energy"])
        writer.writeheader()
        writer.writerows(curve_rows)
    write_report(args, rows, curve_rows, images.shape)


def write_report(args, rows, curve_rows, shape):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scenarios = list(dict.fromkeys(r["scenario"] for r in curve_rows))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 4.2))
    summary = []
    for ax, scenario in zip(np.atleast_1d(axes), scenarios):
        points = [r for r in curve_rows if r["scenario"] == scenario]
        lowest = min(float(r["energy"]) for r in points)
        for setting in dict.fromkeys(r["setting"] for r in points):
            mine = [r for r in points if r["setting"] == setting]
            seconds = [float(r["seconds"]) for r in mine]
            gap = [float(r["energy"]) / lowest - 1 + 1e-7 for r in mine]
            ax.plot(seconds, gap, label=setting)
            reached = next((s for s, g in zip(seconds, gap) if g < 1e-3), None)
            summary.append((scenario, setting, gap[-1], reached, seconds[-1]))
        ax.set_yscale("log")
        ax.set_xlabel("seconds (8 images, this machine)")
        ax.set_ylabel("E / E_lowest - 1")
        ax.set_title(scenario)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=110)
    lines = [f"# pottsops.solve() on CamVid val ({shape[0]} images, {shape[3]}x{shape[2]}, scribbles ratio 1.0)", "",
             f"Produced by `python -m experiments.solver_camvid --iters {args.iters}` on "
             f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}.", "",
             "## Pseudo-label quality from scribbles alone (uniform sigma; nn4, lam 6, sigma_rgb 9)", "",
             "| method | mIoU | seconds |", "|---|---|---|"]
    lines += [f"| {r['method']} | {r['miou']} | {r['seconds']} |" for r in rows]
    lines += ["", "## Energy against time (relaxation cd, first 8 images; curves.png)", "",
              "| scenario | setting | final gap to the lowest energy | seconds to within 1e-3 | seconds |",
              "|---|---|---|---|---|"]
    lines += [f"| {sc} | {st} | {gap:.2e} | {'–' if reached is None else f'{reached:.2f}'} | {total:.2f} |"
              for sc, st, gap, reached, total in summary]
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
