"""Accuracy of the dense lattices against the exact all-pairs sum (cpu-dense suite), on CamVid images small
enough for the exact O(N^2) sum: the dense CRF loss (pottsops.nn.DenseCRFLoss, and rloss's when
benchmarks/rloss.py finds it) and potts_energy(dense, bilinear), value and gradient.  Writes
OUT/accuracy.md and OUT/accuracy.csv."""
import csv
import os

import torch
import torch.nn.functional as F

import pottsops
from benchmarks import data, rloss
from pottsops.nn import DenseCRFLoss

SIGMA_RGB, SIGMA_XY, K = 15.0, 100.0, 21


def exact_dense_crf(images, segmentations, rois, scale):
    """-sum_k S_k^T W S_k / B with the exact filter (float64), after DenseCRFLoss's resizing."""
    if scale != 1.0:
        images = F.interpolate(images, scale_factor=scale)
        segmentations = F.interpolate(segmentations, scale_factor=scale, mode="bilinear", align_corners=False)
        rois = F.interpolate(rois[:, None], scale_factor=scale)[:, 0]
    masked = segmentations * rois[:, None]
    filtered = pottsops.bilateral_filter(masked, images, SIGMA_XY * scale, SIGMA_RGB, backend="reference")
    return -(masked * filtered).sum() / segmentations.shape[0]


def value_and_grad(fn, y):
    y = y.detach().clone().requires_grad_()
    value = fn(y)
    (grad,) = torch.autograd.grad(value, y)
    return float(value), grad.double()


def row(method, size, scale, value, grad, exact_value, exact_grad):
    cosine = float(torch.dot(grad.flatten(), exact_grad.flatten()) / (grad.norm() * exact_grad.norm()))
    return {"method": method, "size": f"{size[0]}x{size[1]}", "scale": scale, "value / exact": f"{value / exact_value:.3f}",
            "gradient error": f"{float((grad - exact_grad).norm() / exact_grad.norm()):.3f}",
            "gradient cosine": f"{cosine:.4f}"}


def measure(quick):
    batch_filter, reason = rloss.load()
    rows = []
    for (H, W), scale in ([((12, 16), 1.0)] if quick else [((48, 64), 1.0), ((96, 128), 0.5)]):
        inputs = data.dense_inputs(max(H, W), K, seed=0)
        images = F.interpolate(inputs["image"], size=(H, W))
        y = F.interpolate(inputs["y"], size=(H, W), mode="bilinear")
        rois = torch.ones(2, H, W)
        exact = value_and_grad(lambda s: exact_dense_crf(images.double(), s, rois.double(), scale), y.double())
        ours = value_and_grad(lambda s: DenseCRFLoss(1.0, SIGMA_RGB, SIGMA_XY, scale)(images, s, rois), y)
        rows.append(row("pottsops DenseCRFLoss", (H, W), scale, *ours, *exact))
        if batch_filter is not None:
            theirs = value_and_grad(lambda s: rloss.dense_crf_loss(batch_filter, images, s, rois, 1.0, SIGMA_RGB,
                                                                    SIGMA_XY, scale), y)
            rows.append(row("rloss DenseCRFLoss", (H, W), scale, *theirs, *exact))
        if scale == 1.0:
            potts = {m: value_and_grad(lambda s: pottsops.potts_energy(
                s, images.double(), relaxation="bilinear", neighborhood="dense", sigma_xy=SIGMA_XY,
                sigma_rgb=SIGMA_RGB, method=m, backend="cpu" if m == "lattice" else "reference"), y.double())
                for m in ("lattice", "exact")}
            rows.append(row("pottsops potts_energy(dense, bl)", (H, W), scale, *potts["lattice"], *potts["exact"]))
    return rows, reason


def write(out, quick):
    rows, reason = measure(quick)
    with open(os.path.join(out, "accuracy.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["Dense CRF losses against the exact all-pairs sum (float64), 2 CamVid images resized, K = 21 softmax "
             f"labels, sigma_rgb {SIGMA_RGB:g}, sigma_xy {SIGMA_XY:g}." + (f" rloss not measured: {reason}." if reason else ""),
             "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    with open(os.path.join(out, "accuracy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
