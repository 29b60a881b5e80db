"""python -m pottsops.demo [IMAGE SCRIBBLES] [--out PNG]: soft pseudo-labels from scribbles.

Without arguments it generates an image (flat-coloured shapes with noise) and scribbles inside each
shape; with IMAGE (any RGB image) and SCRIBBLES (a PNG of class ids, 255 = unlabelled, e.g. CamVid's
scribbles in ../shared/data) it uses those.  pottsops.solve() finds y from the scribbles alone (uniform
network prediction: solve() starts on coarse levels, 8x to 2x smaller; the bilinear relaxation runs
α-expansion where the graph-cut extra is installed) for two relaxations, and the PNG
shows the image, the scribbles, each soft labelling (every pixel the y-weighted mix of the class colours)
and the energy against full-resolution steps.
"""
import argparse
import importlib.util
import time

import numpy as np
import torch

import pottsops

PALETTE = torch.tensor([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                        [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
                        [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [213, 94, 0]],
                       dtype=torch.float32)


def generated_scene(size=192, classes=4, seed=0):
    """(image (1, 3, H, W) in 0..255, labels (1, H, W), scribbles (1, H, W) with 255 = unlabelled)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[(rows - 60) ** 2 + (cols - 60) ** 2 < 40 ** 2] = 1
    labels[(rows > 100) & (rows < 170) & (cols > 30) & (cols < 110)] = 2
    labels[(rows + cols > 230) & (cols > 120) & (rows < 150)] = 3
    colours = torch.rand(classes, 3, generator=g) * 200 + 25
    image = colours[labels].permute(2, 0, 1) + torch.randn(3, size, size, generator=g) * 12
    scribbles = torch.full((size, size), 255, dtype=torch.long)
    scribbles[20:23, 150:185] = 0
    scribbles[170:185, 140:143] = 0
    scribbles[58:61, 35:85] = 1
    scribbles[133:136, 45:95] = 2
    scribbles[95:98, 150:175] = 3
    return image[None].clamp(0, 255), labels[None], scribbles[None]


def load(image_path, scribbles_path):
    from PIL import Image
    image = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32))
    scribbles = torch.from_numpy(np.asarray(Image.open(scribbles_path)).astype(np.int64))
    if scribbles.shape != image.shape[:2]:
        raise ValueError(f"SCRIBBLES: expected size {tuple(image.shape[:2])} (that of IMAGE), got "
                         f"{tuple(scribbles.shape)}")
    if not (scribbles != 255).any():
        raise ValueError("SCRIBBLES: no scribbled pixel (every value is 255)")
    return image.permute(2, 0, 1)[None], None, scribbles[None]


def colourise(y):
    """(H, W, 3) uint8: each pixel the y-weighted mix of the class colours."""
    palette = PALETTE[torch.arange(y.shape[1]) % len(PALETTE)]
    return torch.einsum("khw,kc->hwc", y[0].float(), palette).clamp(0, 255).byte().numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", help="an RGB image")
    parser.add_argument("scribbles", nargs="?", help="a PNG of class ids, 255 where unlabelled")
    parser.add_argument("--out", default="demo.png")
    parser.add_argument("--iters", type=int, default=300)
    args = parser.parse_args(argv)
    if (args.image is None) != (args.scribbles is None):
        parser.error("give both IMAGE and SCRIBBLES, or neither")
    for package, why in (("matplotlib", "draws the PNG"), ("PIL", "reads IMAGE and SCRIBBLES")):
        if (package == "matplotlib" or args.image is not None) and importlib.util.find_spec(package) is None:
            parser.error(f"{package} is not installed ({why}): pip install 'pottsops[train]'")
    image, labels, scribbles = generated_scene() if args.image is None else load(args.image, args.scribbles)
    K = int(scribbles[scribbles != 255].max()) + 1
    logits = torch.zeros(1, max(K, 2), *image.shape[2:])  # uniform prediction: scribbles alone
    print(f"pottsops {pottsops.__version__}: image {tuple(image.shape[2:])}, {K} classes, "
          f"{float((scribbles != 255).float().mean()) * 100:.1f} % of pixels scribbled")
    for name, status in pottsops.backends().items():
        print(f"  backend {name:9s} {status}")
    results = {}
    for relaxation in ("collision_divergence", "bilinear"):
        start = time.perf_counter()
        y, info = pottsops.solve(logits, image, scribbles, relaxation=relaxation, neighborhood="nn8", lam=6.0,
                                 iters=args.iters, return_info=True)
        seconds = time.perf_counter() - start
        results[relaxation] = (y, info)
        steps = " + ".join(f"{int(s.max())} at 1/{f}" if f > 1 else f"{int(s.max())} at full size"
                           for f, s, _ in info.levels)
        how = "by α-expansion" if info.method == "alpha_expansion" else f"in {steps} steps"
        line = (f"{relaxation:22s} energy {float(info.energies[0].sum()):10.1f} -> {float(info.best.sum()):10.1f} "
                f"{how}, {seconds:.2f} s")
        if labels is not None:
            line += f", pixel accuracy of argmax(y) {float((y.argmax(1) == labels).float().mean()) * 100:.1f} %"
        print(line)
    plot(image, scribbles, results, args.out)
    print(f"wrote {args.out}")


def plot(image, scribbles, results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3 + len(results), figsize=(4 * (3 + len(results)), 4))
    axes[0].imshow(image[0].permute(1, 2, 0).byte().numpy())
    axes[0].set_title("image")
    shown = image[0].permute(1, 2, 0).clone() * 0.5
    seeded = scribbles[0] != 255
    shown[seeded] = PALETTE[scribbles[0][seeded] % len(PALETTE)]
    axes[1].imshow(shown.byte().numpy())
    axes[1].set_title("scribbles")
    for ax, (relaxation, (y, info)) in zip(axes[2:], results.items()):
        ax.imshow(colourise(y))
        ax.set_title(f"y, {relaxation}" + (" (α-expansion)" if info.method == "alpha_expansion" else ""))
    for relaxation, (_, info) in results.items():
        axes[-1].plot([float(e.sum()) for e in info.energies], label=relaxation)
    axes[-1].set_xlabel("full-resolution step")
    axes[-1].set_ylabel("energy")
    axes[-1].legend()
    for ax in axes[:-1]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
