"""Evaluation: mIoU from a confusion matrix accumulated over the split (255 ignored), per-volume 3D Dice
(ACDC: a volume's slices stacked), and PNG panels (image | scribbles | soft pseudo-labels | prediction |
ground truth)."""
from collections import defaultdict

import numpy as np
import torch
from PIL import Image, ImageDraw

PALETTE = torch.tensor([[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
                        [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128],
                        [192, 0, 128], [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0],
                        [128, 192, 0], [0, 64, 128]], dtype=torch.float32)


def confusion_matrix(pred, label, num_classes, ignore_index=255):
    """(K, K) int64, rows = ground truth, columns = prediction; pixels labelled ignore_index are left out."""
    valid = label != ignore_index
    index = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index.cpu(), minlength=num_classes ** 2).view(num_classes, num_classes)


def iou_per_class(matrix):
    """IoU of each class; NaN for a class absent from both ground truth and prediction."""
    matrix = matrix.double()
    union = matrix.sum(0) + matrix.sum(1) - matrix.diag()
    return torch.where(union > 0, matrix.diag() / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(matrix):
    return float(iou_per_class(matrix).nanmean())


def dice(pred, label, cls):
    """3D Dice of one class (pred, label: stacked slices); NaN when the class is in neither."""
    p, g = pred == cls, label == cls
    total = int(p.sum()) + int(g.sum())
    return 2.0 * int((p & g).sum()) / total if total else float("nan")


def dice_per_volume(volumes, num_classes):
    """volumes: {name: (pred (S, H, W), label (S, H, W))} -> ({name: [Dice of classes 1..K-1]}, mean per
    class over volumes, mean over classes).  Background (class 0) is not scored."""
    scores = {name: [dice(pred, label, c) for c in range(1, num_classes)] for name, (pred, label) in volumes.items()}
    table = np.array(list(scores.values()), dtype=np.float64).reshape(-1, num_classes - 1)
    scored = ~np.isnan(table)
    per_class = np.where(scored.any(0), np.where(scored, table, 0).sum(0) / np.maximum(scored.sum(0), 1), np.nan)
    return scores, per_class.tolist(), float(np.nanmean(per_class)) if scored.any() else float("nan")


@torch.no_grad()
def predict(model, image, normalise, amp=False, input_scale=1.0):
    """argmax class (B, H, W) and softmax (B, K, H, W) of the model on image (B, C, H, W) in 0..255, the
    network run on the image resized by input_scale and its logits resized back."""
    x = normalise(image)
    if input_scale != 1.0:
        x = torch.nn.functional.interpolate(x, scale_factor=input_scale, mode="bilinear", align_corners=False)
    with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    if logits.shape[2:] != image.shape[2:]:
        logits = torch.nn.functional.interpolate(logits.float(), size=image.shape[2:], mode="bilinear",
                                                 align_corners=False)
    probs = torch.softmax(logits.float(), 1)
    return probs.max(1).indices, probs  # argmax(1), whose CPU kernel is far slower over dim 1


@torch.no_grad()
def evaluate(model, dataset, normalise, device, *, volumes=False, amp=False, limit=None, input_scale=1.0):
    """{'miou', 'iou' (per class)} and, with volumes=True, {'dice' (per class), 'mean_dice', 'volumes' ({name:
    Dice per foreground class})} on a dataset of full-size samples, one image at a time."""
    was_training = model.training
    model.eval()
    k = dataset.num_classes
    matrix = torch.zeros(k, k, dtype=torch.int64)
    stacks = defaultdict(lambda: ([], []))
    for index in range(len(dataset) if limit is None else min(limit, len(dataset))):
        sample = dataset[index]
        pred, _ = predict(model, sample["image"][None].to(device), normalise, amp, input_scale)
        pred = pred[0].cpu()
        matrix += confusion_matrix(pred, sample["label"], k)
        if volumes:
            stacks[sample["volume"]][0].append(pred)
            stacks[sample["volume"]][1].append(sample["label"])
    model.train(was_training)
    iou = iou_per_class(matrix)
    result = {"miou": float(iou.nanmean()), "iou": iou.tolist()}
    if volumes:
        stacked = {name: _stack_slices(preds, labels) for name, (preds, labels) in stacks.items()}
        result["volumes"], result["dice"], result["mean_dice"] = dice_per_volume(stacked, k)
    return result


def _stack_slices(preds, labels):
    """Slices of one volume may differ in size by a pixel after preprocessing: stack them padded with an
    id that is no class (-1), so padding counts for nothing."""
    h = max(p.shape[0] for p in preds)
    w = max(p.shape[1] for p in preds)
    pad = lambda t: torch.nn.functional.pad(t, (0, w - t.shape[1], 0, h - t.shape[0]), value=-1)  # noqa: E731
    return torch.stack([pad(p) for p in preds]), torch.stack([pad(g) for g in labels])


def colourise_ids(ids):
    """(H, W) class ids -> (H, W, 3) uint8; 255 (unlabelled) white."""
    ids = ids.cpu().long()
    out = PALETTE[ids.clamp(0, len(PALETTE) - 1) % len(PALETTE)]
    out[ids == 255] = 255
    return out.byte().numpy()


def colourise_soft(y):
    """(K, H, W) soft labels -> (H, W, 3) uint8: each pixel the y-weighted mix of the class colours."""
    palette = PALETTE[torch.arange(y.shape[0]) % len(PALETTE)]
    return torch.einsum("khw,kc->hwc", y.float().cpu(), palette).clamp(0, 255).byte().numpy()


PANEL_TITLES = ("image", "scribbles", "pseudo-labels", "prediction", "ground truth")


def save_panels(path, rows):
    """rows: dicts with image (C, H, W) 0..255, seeds, y (K, H, W) or None, pred, label -> one PNG, a row per
    sample: image | scribbles | soft pseudo-labels | prediction | ground truth."""
    tiles = []
    for row in rows:
        image = row["image"].cpu().float()
        image = (image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]).permute(1, 2, 0)
        image = image.clamp(0, 255).byte().numpy()
        seeds = colourise_ids(row["seeds"])
        seeds = np.where((row["seeds"].cpu() == 255).numpy()[..., None], image // 2 + 64, seeds).astype(np.uint8)
        soft = colourise_soft(row["y"]) if row.get("y") is not None else np.full_like(image, 255)
        separator = np.full((image.shape[0], 2, 3), 255, np.uint8)
        parts = [image, seeds, soft, colourise_ids(row["pred"]), colourise_ids(row["label"])]
        tiles.append(np.concatenate([x for part in parts for x in (part, separator)][:-1], 1))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 2), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    panel = Image.fromarray(np.concatenate([np.full((14, width, 3), 255, np.uint8)] + tiles, 0))
    draw, column = ImageDraw.Draw(panel), rows[0]["image"].shape[-1] + 2
    for index, title in enumerate(PANEL_TITLES):  # a title strip above the columns (the first row's widths)
        draw.text((index * column + 2, 1), title, fill=(0, 0, 0))
    panel.save(path)
