"""Training settings: one dataclass, per-dataset defaults, and the command line that fills it."""
import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from pottsops.unary import NORMALIZATIONS
from train.methods import FULL_LOSSES, METHODS, Regulariser
from train.model import NETWORKS

DATASETS = ("camvid", "acdc", "voc", "folder", "synthetic")
DEFAULT_DATA = os.environ.get("POTTSOPS_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

# Per-dataset defaults (crop, scale range, ...); the optimiser is the paper's (SGD, poly 0.9, batch 12).
DATASET_DEFAULTS = {
    "camvid": dict(crop=(320, 320), scale=(0.5, 1.5), backbone="resnet50"),
    "acdc": dict(crop=(256, 256), scale=(0.8, 1.2), backbone="resnet50", sigma_rgb=15.0),
    "voc": dict(crop=(320, 320), scale=(0.5, 2.0), backbone="resnet101"),
    "folder": dict(crop=(320, 320), scale=(0.5, 2.0), backbone="resnet50"),
    "synthetic": dict(crop=(64, 64), scale=(1.0, 1.0), backbone="mobilenet_v2", batch_size=8),
}


@dataclass
class TrainConfig:
    data: str = "synthetic"
    root: str = None                 # dataset folder (default: ../shared/data/<data> for camvid and acdc)
    ratio: str = "1.0"               # CamVid scribble length ratio
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = None           # also scored once at the end (results.json "test"), never during the run
    train_patients: tuple = (21, 80)  # ACDC
    val_patients: tuple = (81, 100)
    test_patients: tuple = None      # ACDC's test split (as test_split)
    num_classes: int = None          # folder layout
    channels: int = 3                # folder layout
    scribbles: str = None            # VOC: folder of ScribbleSup PNG or XML files
    synthetic_size: tuple = (64, 16)  # synthetic: (train images, val images)
    method: str = "soft"
    backbone: str = "resnet50"
    output_stride: int = 16
    pretrained: str = None
    reg: Regulariser = field(default_factory=Regulariser)
    warmup: float = 0.2              # gd/hard/soft train on pce alone for this fraction of the run (of its
                                     # steps, or of the time budget where that ends the run first)
    epochs: int = 60
    steps: int = None                # the run's length in steps (the poly decay follows it) instead of epochs
    start_from: str = None           # a checkpoint (model, optimiser, step, RNG) to continue from when OUT has
                                     # none: every method of a paired study branches from one warm-up
    batch_size: int = 12
    lr: float = 7e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    input_scale: float = 1.0         # the network sees images resized by this (evaluation: logits resized back)
    crop: tuple = (320, 320)
    scale: tuple = (0.5, 2.0)
    flip: bool = True
    amp: str = "auto"                # bf16 autocast: auto = on CUDA
    channels_last: str = "auto"      # auto = on CUDA
    resident: str = "auto"           # keep the training set in device memory: auto = on CUDA
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    out: str = "runs/latest"
    resume: bool = False
    checkpoint_every: int = 0        # also checkpoint every N steps (0: at the end of each epoch only)
    eval_every: int = 1              # epochs
    eval_limit: int = None           # evaluate on the first N validation images only
    panels: int = 4                  # validation samples drawn in panels.png
    time_budget: float = None        # seconds of training and of the evaluations during it, then stop (the
                                     # final evaluation, val and test, runs after it); the poly decay
                                     # follows the budget when it ends the run before `epochs`
    max_steps: int = None            # stop after this many steps (tests)
    progress: bool = True


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    return make_config(**{k: v for k, v in vars(args).items() if v is not None})


def build_parser():
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    p.add_argument("--data", choices=DATASETS, default="synthetic", help="the dataset (synthetic: generated)")
    p.add_argument("--method", choices=METHODS, default="soft", help="the training loss (docs/trainer.md)")
    p.add_argument("--root", help="the dataset's folder (default: the evaluation data beside the repository for "
                                   "camvid and acdc; POTTSOPS_DATA overrides)")
    p.add_argument("--ratio", default="1.0", help="CamVid scribble ratio: 1.0, 0.5, 0.3 or 0.0")
    p.add_argument("--scribbles", help="VOC: folder of ScribbleSup scribbles (PNG or XML)")
    p.add_argument("--num-classes", type=int, help="folder layout: number of classes")
    p.add_argument("--channels", type=int, default=3, help="folder layout: 1 (grey) or 3 (RGB)")
    p.add_argument("--backbone", choices=NETWORKS,
                   help="DeepLabV3+ on mobilenet_v2, resnet50 or resnet101, or a small U-Net (unet)")
    p.add_argument("--output-stride", type=int, choices=(8, 16), default=16, help="DeepLabV3+'s encoder stride")
    p.add_argument("--pretrained", help="local torchvision state dict for the backbone (nothing is downloaded)")
    numbers = (("eta", "weight of the pseudo-label term (hard, soft; eq. 8)"),
               ("lam", "weight of the Potts term in the pseudo-label problem"),
               ("sigma_rgb", "colour bandwidth of the affinities, in image units (0..255)"),
               ("sigma_xy", "spatial bandwidth of the affinities, in pixels (window and dense neighbourhoods)"),
               ("gd_lam", "gd: weight of the Potts loss"), ("gd_sigma_rgb", "gd: colour bandwidth"),
               ("gd_sigma_xy", "gd: spatial bandwidth, in input pixels"),
               ("gd_scale", "gd: the inputs of its dense loss are resized by this (rloss's scale_factor)"))
    for name, text in numbers:
        p.add_argument("--" + name.replace("_", "-"), type=float, help=text)
    p.add_argument("--unary", choices=("cce", "ce", "rce"), help="soft: the unary H(y, sigma)")
    p.add_argument("--normalize", choices=NORMALIZATIONS,
                   help="hard, soft: eq. 8's sums / their weight |S| + eta |not S| (weighted, default: pce's step "
                        "size), / the valid pixels (pixels) or each term a mean over its pixels (terms)")
    p.add_argument("--gd-neighborhood", help="gd's Potts loss: dense (the dense CRF loss) or nn4 (grid CRF loss)")
    p.add_argument("--full-loss", choices=FULL_LOSSES, help="full: the dense-mask loss")
    p.add_argument("--hard-method", choices=("alpha_expansion", "mirror_descent"),
                   help="hard's labels: α-expansion (the paper's graph-cut baseline, needs pottsops[graphcut]) or the "
                        "relaxed solver")
    p.add_argument("--relaxation", help="soft: the Potts relaxation (cd, q, nq, lq, bl, ...)")
    p.add_argument("--neighborhood", help="soft: nn4, nn8 or dense")
    p.add_argument("--solver-iters", type=int, help="soft, hard (mirror_descent): solver steps per training step")
    settings = (("warmup", float, "gd, hard, soft train on pCE alone for this fraction of the run (0..1)"),
                ("epochs", int, "length of the run in epochs"),
                ("steps", int, "length of the run in steps (instead of --epochs; the poly decay follows it)"),
                ("max_steps", int, "stop (with a checkpoint) after this many steps of the run"),
                ("time_budget", float, "stop after this many seconds of training and evaluation (the final "
                 "evaluation runs after it)"),
                ("batch_size", int, "images per step and process"), ("lr", float, "SGD learning rate"),
                ("workers", int, "DataLoader workers"), ("seed", int, "seed of the weights and the data order"),
                ("input_scale", float, "the network sees images resized by this"),
                ("checkpoint_every", int, "also checkpoint every N steps"),
                ("eval_every", int, "evaluate every N epochs"),
                ("eval_limit", int, "evaluate on the first N validation images only"),
                ("panels", int, "validation samples drawn in panels.png"))
    for name, kind, text in settings:
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=text)
    p.add_argument("--test-split", help="a split scored once at the end (CamVid: test; ACDC: --test-patients)")
    p.add_argument("--start-from", help="checkpoint to continue from when OUT has none (a shared warm-up)")
    for name in ("train_patients", "val_patients", "test_patients"):
        p.add_argument("--" + name.replace("_", "-"), type=int, nargs=2, metavar=("FIRST", "LAST"),
                       help=f"ACDC: the patients of the {name.split('_')[0]} split")
    p.add_argument("--synthetic-size", type=int, nargs=2, metavar=("TRAIN", "VAL"),
                   help="the generated set: number of training and validation images")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="training crop size")
    p.add_argument("--scale", type=float, nargs=2, metavar=("LOW", "HIGH"), help="random scale range")
    p.add_argument("--no-flip", action="store_true", help="no random left-right flips")
    for name, text in (("amp", "bf16 autocast"), ("channels_last", "channels_last memory format"),
                       ("resident", "keep the training set in device memory")):
        p.add_argument("--" + name.replace("_", "-"), choices=("auto", "on", "off"), help=f"{text} (auto: on CUDA)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--out", help="folder of the run's logs, checkpoint, results and panels")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    return p


def make_config(data="synthetic", no_flip=False, no_progress=False, **overrides):
    """TrainConfig for `data` with its defaults, then the overrides (regulariser fields by name too)."""
    config = TrainConfig(data=data, **{k: v for k, v in DATASET_DEFAULTS[data].items() if k in TrainConfig.__dataclass_fields__})
    reg_fields = {f.name for f in dataclasses.fields(Regulariser)}
    reg = {k: v for k, v in DATASET_DEFAULTS[data].items() if k in reg_fields}
    reg.update({k: overrides.pop(k) for k in list(overrides) if k in reg_fields})
    config.reg = dataclasses.replace(config.reg, **reg)
    for key, value in overrides.items():
        if key not in TrainConfig.__dataclass_fields__:
            raise ValueError(f"{key}: not a training setting")
        setattr(config, key, tuple(value) if isinstance(value, list) else value)
    config.flip = config.flip and not no_flip
    config.progress = config.progress and not no_progress
    if config.method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {config.method!r}")
    if config.root is None and data in ("camvid", "acdc"):
        config.root = os.path.join(DEFAULT_DATA, data)
    if data in ("camvid", "acdc") and not os.path.isdir(config.root):
        layout = {"camvid": "images/{train,val}/*.jpg, labels/{train,val}/*.png, scribbles/RATIO/{train,val}/*.png",
                  "acdc": "image/, label/, scribble/ of patientPPP_frameFF_slice_S.png"}[data]
        raise ValueError(f"root: no {data} data at {config.root!r}: give --root FOLDER, or set POTTSOPS_DATA to a "
                         f"folder holding {data}/ (layout: {layout}; where to get it: docs/trainer.md, 'Data')")
    if config.root is None and data in ("voc", "folder"):
        raise ValueError(f"root: --data {data} needs --root PATH")
    if data == "folder" and not config.num_classes:
        raise ValueError("num_classes: --data folder needs --num-classes K")
    if not 0.0 <= config.warmup < 1.0:
        raise ValueError(f"warmup: expected a fraction of the run in [0, 1), got {config.warmup}")
    if config.steps is not None and config.steps < 1:
        raise ValueError(f"steps: expected a positive number of steps, got {config.steps}")
    if config.start_from is not None and not os.path.isfile(config.start_from):
        raise ValueError(f"start_from: no checkpoint {config.start_from!r}")
    if config.batch_size < 2:  # a batch of one fails inside BatchNorm, whose image-pooling branch sees 1 x 1
        raise ValueError(f"batch_size: expected at least 2 per process (--batch-size; the ASPP's image-pooling "
                         f"BatchNorm needs more than one value per channel), got {config.batch_size}")
    return config
