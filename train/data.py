"""Datasets for scribble-supervised segmentation: each sample is a dict

    image  (C, H, W) float32 in 0..255      (the solver's affinities use these units)
    label  (H, W) int64, 255 = unknown/void  (all 255 when a dataset has no dense labels)
    seeds  (H, W) int64 class id on scribbled pixels, 255 elsewhere
    name   str;  volume  str (the 3D volume a slice belongs to, for ACDC; else the name)

Layouts: the CamVid and ACDC folders of ../shared/data, PASCAL VOC 2012 with ScribbleSup scribbles (PNG
as distributed, or the XML polygons, drawn 3 px wide), a generic images/labels/scribbles folder, and a
generated synthetic set.  Every file is checked when read: missing or unreadable files, sizes that differ
from the image's, class ids >= num_classes and scribble maps without a scribble raise a ValueError naming
the file.
"""
import os
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import torch
from PIL import Image, ImageDraw

IGNORE = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist")
ACDC_CLASSES = ("background", "RV", "Myo", "LV")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class SegmentationFiles(torch.utils.data.Dataset):
    """Samples read from files.  items: dicts with name, image (path), label (path or None), scribbles
    (path to a PNG of class ids or a ScribbleSup XML, or None), volume."""

    def __init__(self, items, num_classes, channels, class_names=None, scribble_width=3, source="the dataset"):
        if not items:  # source: where the images were looked for, for this message
            raise ValueError(f"dataset: no images found in {source}")
        self.items, self.num_classes, self.channels = items, num_classes, channels
        self.class_names = class_names or tuple(str(k) for k in range(num_classes))
        self.scribble_width = scribble_width

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        image = read_image(item["image"], self.channels)
        size = image.shape[1:]
        label = read_ids(item["label"], size, self.num_classes) if item.get("label") else \
            torch.full(size, IGNORE, dtype=torch.int64)
        if item.get("scribbles") is None:
            seeds = torch.full(size, IGNORE, dtype=torch.int64)
        elif item["scribbles"].endswith(".xml"):
            seeds = read_scribble_xml(item["scribbles"], size, self.class_names, self.scribble_width)
        else:
            seeds = read_ids(item["scribbles"], size, self.num_classes, "scribbles")
        if item.get("scribbles") is not None and not (seeds != IGNORE).any():
            raise ValueError(f"scribbles: {item['scribbles']!r} has no scribbled pixel")
        return {"image": image, "label": label, "seeds": seeds, "name": item["name"],
                "volume": item.get("volume", item["name"])}


class GeneratedSet(torch.utils.data.Dataset):
    """Generated scenes for the demo and tests: a textured background (class 0) and up to three objects
    (1 disc, 2 box, 3 triangle), each class with its own colour jittered per image so that colour and
    shape both tell the class, but neither exactly; scribbles are short 3 px strokes through each object's
    interior and through the background."""

    num_classes, channels, class_names = 4, 3, ("background", "disc", "box", "triangle")
    colours = torch.tensor([[200.0, 60, 60], [60, 180, 70], [70, 90, 210]])

    def __init__(self, count, size=64, seed=0):
        self.count, self.size, self.seed = count, size, seed

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(self.seed * 100003 + index)
        n = self.size
        rows, cols = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32),
                                    indexing="ij")
        label = torch.zeros(n, n, dtype=torch.int64)
        seeds = torch.full((n, n), IGNORE, dtype=torch.int64)
        image = torch.rand(3, 1, 1, generator=g) * 160 + 40 + torch.randn(3, n, n, generator=g) * 12
        for cls in torch.randperm(3, generator=g)[:int(torch.randint(1, 4, (1,), generator=g))].tolist():
            r = float(torch.randint(n // 6, n // 3, (1,), generator=g))
            cy, cx = (float(v) for v in torch.randint(int(r), n - int(r), (2,), generator=g))
            dy, dx = (rows - cy) / r, (cols - cx) / r
            inside = [dy ** 2 + dx ** 2 < 1, (dy.abs() < 0.85) & (dx.abs() < 0.85),
                      (dy < 0.8) & (dy > 2 * dx.abs() - 1)][cls]
            label[inside] = cls + 1
            colour = self.colours[cls] + torch.randn(3, generator=g) * 30
            image[:, inside] = colour[:, None] + torch.randn(3, int(inside.sum()), generator=g) * 12
            seeds[((rows - cy - 0.3 * r).abs() <= 1) & ((cols - cx).abs() <= 0.5 * r) & inside] = cls + 1
        row = int(torch.randint(2, n - 2, (1,), generator=g))
        stroke = ((rows - row).abs() <= 1) & ((cols - n / 2).abs() <= n / 4)
        seeds[stroke & _eroded(label == 0, 3)] = 0
        return {"image": image.clamp(0, 255), "label": label, "seeds": seeds, "name": f"generated_{index:04d}",
                "volume": f"generated_{index:04d}"}


def _eroded(region, radius):
    outside = (~region).float()[None, None]
    return torch.nn.functional.max_pool2d(outside, 2 * radius + 1, 1, radius)[0, 0] == 0


def read_image(path, channels):
    """(channels, H, W) float32 in 0..255."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"channels: expected 1 or 3 for image files, got {channels}")
    with _open(path, "image") as image:
        array = np.asarray(image.convert(mode), dtype=np.float32)
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], channels)).permute(2, 0, 1).contiguous()


def read_ids(path, size, num_classes, what="label"):
    """(H, W) int64 class ids of a PNG (palette indices as stored, 255 = ignore), checked against size and
    num_classes; what: the kind of file (label, scribbles) the errors name."""
    with _open(path, what) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{what}: {path!r}: expected a single-channel PNG of class ids, got mode {image.mode}")
        ids = torch.from_numpy(np.asarray(image).astype(np.int64))
    if tuple(ids.shape) != tuple(size):
        raise ValueError(f"{what}: {path!r}: size {tuple(ids.shape)} differs from its image's {tuple(size)}")
    bad = (ids != IGNORE) & ((ids < 0) | (ids >= num_classes))
    if bad.any():
        raise ValueError(f"{what}: {path!r}: class id {int(ids[bad][0])} is not below num_classes={num_classes} "
                         f"(and is not {IGNORE} = ignore)")
    return ids


def read_scribble_xml(path, size, class_names, width=3):
    """ScribbleSup XML (<polygon><tag>class name</tag><point><X>x</X><Y>y</Y></point>...) drawn as polylines
    `width` pixels wide into an (H, W) map of class ids, 255 elsewhere."""
    try:
        root = ElementTree.parse(path).getroot()
    except FileNotFoundError:
        raise ValueError(f"scribbles: no file {path!r}") from None
    except ElementTree.ParseError as error:
        raise ValueError(f"scribbles: {path!r} is not valid XML ({error})") from None
    canvas = Image.new("L", (size[1], size[0]), IGNORE)
    draw = ImageDraw.Draw(canvas)
    for polygon in root.iter("polygon"):
        tag = (polygon.findtext("tag") or "").strip()
        if tag not in class_names:
            raise ValueError(f"scribbles: {path!r} names class {tag!r}, not one of {class_names}")
        points = [(float(p.findtext("X")), float(p.findtext("Y"))) for p in polygon.iter("point")]
        if len(points) == 1:
            points = points * 2
        draw.line(points, fill=class_names.index(tag), width=width)
    return torch.from_numpy(np.asarray(canvas).astype(np.int64))


class _open:
    def __init__(self, path, what):
        self.path, self.what = path, what

    def __enter__(self):
        if not os.path.isfile(self.path):
            raise ValueError(f"{self.what}: no file {self.path!r}")
        try:
            self.image = Image.open(self.path)
            self.image.load()
        except OSError as error:
            raise ValueError(f"{self.what}: cannot read {self.path!r} ({error})") from None
        return self.image

    def __exit__(self, *exc):
        self.image.close()


def _stems(folder):
    if not os.path.isdir(folder):
        raise ValueError(f"root: expected a folder {folder!r}")
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(IMAGE_EXTENSIONS + (".xml",))}


def _pair(folder, stem, required, what):
    path = _stems(folder).get(stem) if folder and os.path.isdir(folder) else None
    if path is None and required:
        raise ValueError(f"{what}: no file for {stem!r} in {folder!r}")
    return path


def camvid(root, split, ratio="1.0"):
    """root: the camvid folder of ../shared/data (images/, labels/, scribbles/RATIO/)."""
    image_folder = os.path.join(root, "images", split)
    images = _stems(image_folder)
    items = [{"name": stem, "image": path,
              "label": _pair(os.path.join(root, "labels", split), stem, True, "label"),
              "scribbles": _pair(os.path.join(root, "scribbles", ratio, split), stem, True, "scribbles")}
             for stem, path in images.items()]
    return SegmentationFiles(items, 11, 3, CAMVID_CLASSES,
                             source=f"{image_folder!r} (split {split!r}: its images, *.png or *.jpg)")


def acdc(root, patients):
    """root: the acdc folder (image/, label/, scribble/; NAME = patientPPP_frameFF_slice_S); patients: the
    (first, last) patient numbers to use.  Slices of a volume are ordered by S."""
    pattern = re.compile(r"patient(\d+)_frame(\d+)_slice_(\d+)$")
    items = []
    for stem, path in _stems(os.path.join(root, "image")).items():
        match = pattern.match(stem)
        if match is None or not patients[0] <= int(match[1]) <= patients[1]:
            continue
        items.append({"name": stem, "image": path, "volume": f"patient{match[1]}_frame{match[2]}",
                      "order": (int(match[1]), int(match[2]), int(match[3])),
                      "label": _pair(os.path.join(root, "label"), stem, True, "label"),
                      "scribbles": _pair(os.path.join(root, "scribble"), stem, True, "scribbles")})
    items.sort(key=lambda item: item["order"])
    return SegmentationFiles(items, 4, 1, ACDC_CLASSES, source=f"{os.path.join(root, 'image')!r} for patients "
                             f"{patients[0]}-{patients[1]} (files patientPPP_frameFF_slice_S.png)")


def voc(root, split, scribbles=None):
    """root: VOC2012 (JPEGImages/, SegmentationClassAug/ or SegmentationClass/, ImageSets/Segmentation/
    SPLIT.txt); scribbles: folder of ScribbleSup PNGs or XMLs named like the images (default
    root/scribbles; the val split needs none)."""
    list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise ValueError(f"root: no image list {list_file!r}")
    with open(list_file) as f:
        stems = [line.split()[0] for line in f if line.strip()]
    labels = next((os.path.join(root, d) for d in ("SegmentationClassAug", "SegmentationClass")
                   if os.path.isdir(os.path.join(root, d))), None)
    scribbles = scribbles or os.path.join(root, "scribbles")
    need_scribbles = split != "val"
    items = [{"name": stem, "image": os.path.join(root, "JPEGImages", stem + ".jpg"),
              "label": _pair(labels, stem, split == "val", "label"),
              "scribbles": _pair(scribbles, stem, need_scribbles, "scribbles")} for stem in stems]
    return SegmentationFiles(items, 21, 3, VOC_CLASSES, source=f"the image list {list_file!r} (split {split!r})")


def folder(root, split, num_classes, channels=3):
    """root/images[/SPLIT], root/labels[/SPLIT] (optional), root/scribbles[/SPLIT]: files matched by name."""
    def sub(name):
        path = os.path.join(root, name, split)
        return path if os.path.isdir(path) else os.path.join(root, name)
    items = [{"name": stem, "image": path, "label": _pair(sub("labels"), stem, False, "label"),
              "scribbles": _pair(sub("scribbles"), stem, split == "train", "scribbles")}
             for stem, path in _stems(sub("images")).items()]
    return SegmentationFiles(items, num_classes, channels,
                             source=f"{sub('images')!r} (split {split!r}: images named *{', *'.join(IMAGE_EXTENSIONS)})")
