"""The pseudo-label problems of a paired training study, measured at its warm-up checkpoints.

    python -m experiments.warmup_labels --runs runs/acdc_paired --seeds 0 1 2 --batches 4 \\
        --out experiments/results/train/acdc_paired

For each warm-up checkpoint (RUNS/warmup/seedS/last.pt) the network's logits on the first training batches
of that seed (the crops, scribbles and masks the training sees, BatchNorm in training mode as in a training
step) give the problems soft and hard solve:

1. solver steps: solve(cd, cce) with the trainer's settings, `iters` from a list and the solver's learning
   rate `lr` from another (--lrs; solve()'s default 0.1 alone by default), each problem's gap
   (E - E*) / (E* - L) against the lowest energy any run reached (E*: a 3000-step run with tol 0 included;
   L the unary's lower bound), and the seconds per batch; the cheapest (lr, iters) whose median gap is at
   most 1e-2 is what training should use;
2. label quality: Dice (RV, Myo, LV; pixels pooled over the crops) against the ground truth of the
   network's argmax, argmax of the soft labels, and hard's α-expansion labels.

Writes solver_steps.csv, label_quality.csv and prints both tables.
"""
import argparse
import csv
import os
import time

import numpy as np
import torch

import pottsops
from train.config import make_config
from train.loader import TrainBatches
from train.loop import build_datasets, normaliser
from train.model import build_model

REFERENCE_ITERS = 3000


def problems(checkpoint, batches):
    """[(logits, batch)] from the checkpoint's network on its seed's first training batches."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    settings = dict(state["config"])
    reg = settings.pop("reg")
    for key in ("train_patients", "val_patients", "test_patients", "crop", "scale", "synthetic_size"):
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    config = make_config(**{**settings, **reg, "progress": True})
    train_set, _ = build_datasets(config)
    scale = tuple(s * config.input_scale for s in config.scale)
    loader = TrainBatches(train_set, config.batch_size, config.crop, scale=scale, flip=config.flip,
                          seed=config.seed, device="cpu", resident=False, workers=0)
    model = build_model(train_set.num_classes, config.backbone, config.output_stride, train_set.channels)
    model.load_state_dict(state["model"])
    model.train()  # the logits of a training step (batch statistics); nothing is updated
    normalise = normaliser(train_set.channels, "cpu")
    out = []
    with torch.no_grad():
        for index, batch in enumerate(loader.epoch(0)):
            if index == batches:
                break
            out.append((model(normalise(batch["image"])).float(), batch))
    return out, config.reg


def energy(logits, batch, y, reg):
    """eta sum H(y, sigma) over unlabeled valid pixels + lam Potts(y), per image (float64)."""
    unlabeled = batch["mask"] & (batch["seeds"] == 255)
    unary = pottsops.unary(logits.double(), y.double(), reg.unary, mask=unlabeled, reduction="none").sum((1, 2))
    potts = pottsops.potts_energy(y.double(), batch["image"].double(), relaxation=reg.relaxation,
                                  neighborhood=reg.neighborhood, sigma_rgb=reg.sigma_rgb, mask=batch["mask"],
                                  reduction="none")
    return reg.eta * unary + reg.lam * potts


def solver_steps(cases, reg, iters_list, lrs=(0.1,)):
    """Rows (lr, iters, median gap, 90th percentile gap, seconds per batch)."""
    energies, seconds, lowers = {}, {}, []
    runs = [(0.1, REFERENCE_ITERS, 0.0)] + [(lr, i, 1e-3) for lr in lrs for i in iters_list]
    for lr, iters, tol in runs:
        energies[lr, iters, tol], seconds[lr, iters, tol] = [], []
        for logits, batch in cases:
            tick = time.perf_counter()
            y, info = pottsops.solve(logits, batch["image"], batch["seeds"], relaxation=reg.relaxation,
                                     unary=reg.unary, neighborhood=reg.neighborhood, eta=reg.eta, lam=reg.lam,
                                     sigma_rgb=reg.sigma_rgb, mask=batch["mask"], iters=iters, tol=tol, lr=lr,
                                     return_info=True)
            seconds[lr, iters, tol].append(time.perf_counter() - tick)
            energies[lr, iters, tol].append(energy(logits, batch, y, reg))
            if iters == REFERENCE_ITERS:
                lowers.append(info.lower.double())
    best = torch.stack([torch.cat(e) for e in energies.values()]).min(0).values
    lower = torch.cat(lowers)
    rows = []
    for lr, iters, tol in runs[1:]:
        gap = (torch.cat(energies[lr, iters, tol]) - best) / (best - lower).clamp(min=1e-12)
        rows.append({"lr": lr, "iters": iters, "median_gap": float(gap.median()), "p90_gap": float(gap.quantile(0.9)),
                     "seconds_per_batch": float(np.mean(seconds[lr, iters, tol]))})
    return rows


def dice(pred, label, mask, classes):
    """Dice per foreground class over all given pixels."""
    scores = []
    for c in range(1, classes):
        p, g = (pred == c) & mask, (label == c) & mask
        total = int(p.sum() + g.sum())
        scores.append(2 * int((p & g).sum()) / total if total else float("nan"))
    return scores


def label_quality(cases, reg, iters, eta_soft, eta_hard):
    """Dice of the network's argmax, the soft labels' argmax and the α-expansion labels."""
    preds = {"network": [], "soft": [], "hard": []}
    labels, masks = [], []
    for logits, batch in cases:
        soft = pottsops.solve(logits, batch["image"], batch["seeds"], relaxation=reg.relaxation, unary=reg.unary,
                              neighborhood=reg.neighborhood, eta=eta_soft, lam=reg.lam, sigma_rgb=reg.sigma_rgb,
                              mask=batch["mask"], iters=iters)
        hard = pottsops.solve(logits, batch["image"], batch["seeds"], relaxation="bilinear", unary="ce",
                              neighborhood="nn4", eta=eta_hard, lam=reg.lam, sigma_rgb=reg.sigma_rgb,
                              mask=batch["mask"], method="alpha_expansion")
        preds["network"].append(logits.argmax(1))
        preds["soft"].append(soft.argmax(1))
        preds["hard"].append(hard.argmax(1))
        labels.append(batch["label"])
        masks.append(batch["mask"] & (batch["label"] != 255))
    label, mask = torch.cat(labels), torch.cat(masks)
    classes = cases[0][0].shape[1]
    return {name: dice(torch.cat(p), label, mask, classes) for name, p in preds.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="the study's runs folder (RUNS/NAME)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--batches", type=int, default=4, help="training batches per seed")
    parser.add_argument("--iters", nargs="+", type=int, default=[25, 50, 100, 200, 300, 500])
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.1], help="solve()'s learning rates to measure")
    parser.add_argument("--no-labels", action="store_true", help="the solver steps only (no label quality)")
    parser.add_argument("--eta-soft", type=float, help="default: the trainer's eta")
    parser.add_argument("--eta-hard", type=float, help="default: the trainer's eta")
    parser.add_argument("--label-iters", type=int, help="the soft solve's iters for label quality (default: "
                                                        "the smallest measured iters reaching 1e-2)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    step_rows, label_rows = [], []
    for seed in args.seeds:
        cases, reg = problems(os.path.join(args.runs, "warmup", f"seed{seed}", "last.pt"), args.batches)
        rows = solver_steps(cases, reg, args.iters, args.lrs)
        step_rows += [{"seed": seed, **row} for row in rows]
        if args.no_labels:
            continue
        iters = args.label_iters or next((r["iters"] for r in rows if r["median_gap"] <= 1e-2), args.iters[-1])
        quality = label_quality(cases, reg, iters, args.eta_soft or reg.eta, args.eta_hard or reg.eta)
        label_rows += [{"seed": seed, "labels": name, "rv": round(d[0], 4), "myo": round(d[1], 4),
                        "lv": round(d[2], 4), "mean": round(float(np.nanmean(d)), 4)} for name, d in quality.items()]
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("solver_steps.csv", step_rows), ("label_quality.csv", label_rows)):
        if not rows:
            continue
        with open(os.path.join(args.out, name), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print("lr | iters | median gap | p90 gap | s / batch (over seeds)")
    for lr in args.lrs:
        for iters in args.iters:
            rs = [r for r in step_rows if r["iters"] == iters and r["lr"] == lr]
            print(f"{lr:g} | {iters} | {np.median([r['median_gap'] for r in rs]):.4g} | "
                  f"{np.median([r['p90_gap'] for r in rs]):.4g} | {np.mean([r['seconds_per_batch'] for r in rs]):.3f}")
    if args.no_labels:
        return
    print("labels | RV | Myo | LV | mean (over seeds)")
    for name in ("network", "soft", "hard"):
        rs = [r for r in label_rows if r["labels"] == name]
        print(f"{name} | " + " | ".join(f"{np.nanmean([r[k] for r in rs]):.4f}" for k in ("rv", "myo", "lv", "mean")))


if __name__ == "__main__":
    main()
