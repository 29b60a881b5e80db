"""How strong each loss term of the README is beside partial cross-entropy (pCE), at the image sizes users run.

    python -m benchmarks.loss_scale [--sizes 180x240 360x480 513x513] --out benchmarks/results/loss-scale

For CamVid val images (../shared/data/camvid, POTTSOPS_DATA overrides; generated scenes without it) resized to
each size, a torchvision DeepLabV3 (MobileNetV3-Large, from scratch, train mode, batch 2, seed 0) trained
with pCE on the batch until pCE's loss is WARMUP_LOSS (predictions that follow the scribbles, as where a
Potts term is switched on; from scratch, every Potts gradient nearly vanishes), and the scribbles: the norm
of each term's gradient, to the network's parameters and to its logits, divided by pCE's on the same batch (pCE: cross-entropy over the scribbled pixels, a mean over them).  A ratio of 0.1 means the
term moves the network a tenth as much as the scribbles do.  Terms: the README's modules at the README's
weights, and SoftSelfLabelingLoss, which replaces pCE (its ratio is its step size against pCE's).
Writes OUT/results.md and OUT/results.csv.
"""
import argparse
import csv
import glob
import os
import platform

import numpy as np
import torch
import torch.nn.functional as F

import pottsops
import pottsops.demo

# The README's quick-start weights (README.md, "Quick start"); the test that checks them: tests/test_examples.py
README_TERMS = {
    "PottsLoss(bl, nn4, sigma_rgb 15, weight 0.1)":
        lambda: pottsops.nn.PottsLoss(relaxation="bl", neighborhood="nn4", sigma_rgb=15.0, weight=0.1),
    "GatedCRFLoss(weight 0.003, xy 6, rgb 15, radius 5)":
        lambda: pottsops.nn.GatedCRFLoss([{"weight": 0.003, "xy": 6.0, "rgb": 15.0}], kernels_radius=5),
    "DenseCRFLoss(2e-9, 15, 100, 0.5) (rloss's, for 513x513)": lambda: pottsops.nn.DenseCRFLoss(2e-9, 15.0, 100.0, 0.5),
    "DenseCRFLoss(2e-8, 15, 100, 0.5)": lambda: pottsops.nn.DenseCRFLoss(2e-8, 15.0, 100.0, 0.5),
    "SoftSelfLabelingLoss(eta 0.3, lam 6), instead of pCE": lambda: pottsops.nn.SoftSelfLabelingLoss(eta=0.3, lam=6.0),
}


def camvid_batch(root, size, count=2):
    from PIL import Image
    images = sorted(glob.glob(os.path.join(root, "images", "val", "*")))[:count]
    if not images:
        return None
    out, seeds = [], []
    for path in images:
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        image = Image.open(path).convert("RGB").resize(size[::-1], Image.BILINEAR)
        scribble = Image.open(os.path.join(root, "scribbles", "1.0", "val", name)).resize(size[::-1], Image.NEAREST)
        out.append(torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1))
        seeds.append(torch.from_numpy(np.asarray(scribble, dtype=np.int64)))
    return torch.stack(out), torch.stack(seeds), 11


def generated_batch(size, count=2):
    images, seeds = [], []
    for index in range(count):
        image, _, scribbles = pottsops.demo.generated_scene(max(size), seed=index)
        images.append(F.interpolate(image, size=size, mode="bilinear", align_corners=False)[0])
        seeds.append(F.interpolate(scribbles[:, None].float(), size=size)[0, 0].long())
    return torch.stack(images), torch.stack(seeds), 4


WARMUP_LOSS, MAX_WARMUP_STEPS = 0.5, 200
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def gradient_ratios(images, seeds, num_classes, terms, seed=0):
    """{term: (parameter-gradient ratio, logit-gradient ratio)} against pCE on one batch, once pCE steps on
    it brought its loss to WARMUP_LOSS; and the steps that took."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
    torch.manual_seed(seed)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss_of):
        logits = model((images - MEAN) / STD)["out"]
        logits.retain_grad()
        loss = loss_of(logits)
        loss.backward()
        g = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
        for p in params:
            p.grad = None
        return float(g.norm()), float(logits.grad.abs().sum())

    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    steps = 0  # a partly trained network: a from-scratch one predicts nearly uniform, smooth maps, where every
    while steps < MAX_WARMUP_STEPS:  # Potts term's gradient nearly vanishes; trained on until pCE reaches
        optimizer.zero_grad(set_to_none=True)  # WARMUP_LOSS, as where a Potts term is switched on
        loss = F.cross_entropy(model((images - MEAN) / STD)["out"], seeds, ignore_index=255)
        if float(loss.detach()) <= WARMUP_LOSS:
            break
        loss.backward()
        optimizer.step()
        steps += 1
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm's statistics: the same each pass
    pce = grads(lambda z: F.cross_entropy(z, seeds, ignore_index=255))
    out = {}
    for name, make in terms.items():
        model.load_state_dict(state)
        term = make()
        if isinstance(term, pottsops.nn.SoftSelfLabelingLoss):
            loss_of = lambda z, term=term: term(z, images, seeds)  # noqa: E731
        elif isinstance(term, pottsops.nn.DenseCRFLoss):
            loss_of = lambda z, term=term: term(images, torch.softmax(z, 1), torch.ones_like(seeds, dtype=torch.float))  # noqa: E731
        else:
            loss_of = lambda z, term=term: term(torch.softmax(z, 1), images)  # noqa: E731
        g = grads(loss_of)
        out[name] = (g[0] / pce[0], g[1] / pce[1])
    return out, steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["180x240", "360x480", "513x513"])
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "loss-scale"))
    args = parser.parse_args(argv)
    root = os.path.join(os.environ.get("POTTSOPS_DATA", os.path.join("..", "shared", "data")), "camvid")
    rows = []
    for text in args.sizes:
        size = tuple(int(v) for v in text.split("x"))
        batch = camvid_batch(root, size) or generated_batch(size)
        source = "CamVid val" if os.path.isdir(root) else "generated"
        ratios, steps = gradient_ratios(*batch, README_TERMS)
        for name, (param, logit) in ratios.items():
            rows.append({"size": text, "images": source, "warmup_steps": steps, "term": name,
                         "parameter_ratio": round(param, 4), "logit_ratio": round(logit, 4)})
            print(rows[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sha = os.popen("git rev-parse --short HEAD").read().strip()
    lines = ["# Loss terms beside partial cross-entropy", "",
             f"`python -m benchmarks.loss_scale` on {platform.machine()} ({os.cpu_count()} cores), torch "
             f"{torch.__version__}, commit {sha}: gradient norm of each term / pCE's, batch 2, torchvision "
             f"DeepLabV3-MobileNetV3 from scratch, trained with pCE on the batch until its loss is {WARMUP_LOSS} "
             "(the steps that took in the table).", "",
             "| size | images | pCE steps | term | parameters | logits (L1) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['images']} | {r['warmup_steps']} | {r['term']} | {r['parameter_ratio']:.3g} | "
              f"{r['logit_ratio']:.3g} |" for r in rows]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
