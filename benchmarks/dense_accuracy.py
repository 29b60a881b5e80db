"""Accuracy of the dense lattices against the exact all-pairs sum (cpu-dense suite), on CamVid images small
enough for the exact O(N^2) sum: the dense CRF loss (pottsops.nn.DenseCRFLoss, and rloss's when
benchmarks/rloss.py finds it) and potts_energy(dense, bilinear), value and gradient.  Writes
OUT/accuracy.md and OUT/accuracy.csv; and the lattice build's time and peak memory, kept or refused
(OUT/lattice_memory.md and .csv)."""
import csv
import os
import time

import torch
import torch.nn.functional as F

import pottsops
from benchmarks import data, harness, rloss
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
    return float(value.detach()), grad.double()


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


def memory_cases(quick):
    """(name, image, sigma_xy, sigma_rgb): real images at usual bandwidths, noise, and more channels than the
    lattice takes (issue 30: 14 channels at 256^2 took 4.4 GB and failed; RGB noise at 512^2 3.0 GB)."""
    size = 64 if quick else 512
    camvid = data.camvid_images(size, count=1)
    noise = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    grey = camvid.mean(1, keepdim=True)
    many = torch.rand(1, 14, size // 2, size // 2, generator=torch.Generator().manual_seed(1)) * 255
    return [(f"CamVid RGB {size}^2", camvid, 100.0, 15.0), (f"CamVid RGB {size}^2", camvid, 5.0, 15.0),
            (f"CamVid RGB + grey {size}^2", torch.cat([camvid, grey], 1), 10.0, 15.0),
            (f"RGB noise {size}^2", noise, 10.0, 15.0), (f"RGB noise {size}^2", noise, 1.0, 1.0),
            (f"14-channel noise {size // 2}^2", many, 10.0, 15.0)]


def memory_row(name, image, sigma_xy, sigma_rgb):
    """One lattice build: its time, the peak resident memory beyond what was there before, and what it gave."""
    outcome = {}

    def build():
        start = time.perf_counter()
        try:
            built = pottsops.lattice.prepare_filter(image, sigma_xy, sigma_rgb, backend="cpu")
            outcome["result"] = f"{built.lattice[2].shape[0] / image[0, 0].numel():.1f} vertices per pixel"
        except ValueError as error:
            outcome["result"] = "refused: " + str(error).split(":")[1].strip()[:60]
        outcome["seconds"] = time.perf_counter() - start

    peak = harness.cpu_peak_extra_mb(build)
    return {"image": name, "sigma_xy, sigma_rgb": f"{sigma_xy:g}, {sigma_rgb:g}", "result": outcome["result"],
            "seconds": f"{outcome['seconds']:.2f}", "peak MB": "not measured" if peak is None else f"{peak:.0f}"}


def write_memory(out, quick):
    rows = [memory_row(*case) for case in memory_cases(quick)]
    write_table(out, "lattice_memory", rows, "The lattice build (`prepare_filter`, cpu backend, one thread): time "
                "and peak resident memory beyond the inputs, and the vertices it keeps per pixel or why it refused.")


def write_table(out, name, rows, caption):
    with open(os.path.join(out, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [caption, "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in rows]
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def write(out, quick):
    rows, reason = measure(quick)
    write_table(out, "accuracy", rows, "Dense CRF losses against the exact all-pairs sum (float64), 2 CamVid images "
                f"resized, K = 21 softmax labels, sigma_rgb {SIGMA_RGB:g}, sigma_xy {SIGMA_XY:g}."
                + (f" rloss not measured: {reason}." if reason else ""))
    write_memory(out, quick)

