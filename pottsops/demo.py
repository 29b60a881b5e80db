"""python -m pottsops.demo: the six relaxations' Potts energies on a generated image, and the time of
each available backend (forward + backward).

The image has a few flat-coloured shapes on a background; y is a soft labelling that is right in the
interior of each shape and uncertain near its boundary, so the energies are those of a plausible
network prediction.
"""
import time

import torch

import pottsops
from pottsops.names import RELAXATION_ALIASES


def generated_scene(size=192, classes=4, seed=0):
    """(image (1, 3, H, W) in 0..255, labels (1, H, W), soft labels y (1, K, H, W))."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[(rows - 60) ** 2 + (cols - 60) ** 2 < 40 ** 2] = 1
    labels[(rows > 100) & (rows < 170) & (cols > 30) & (cols < 110)] = 2
    labels[(rows + cols > 230) & (cols > 120) & (rows < 150)] = 3
    colours = torch.rand(classes, 3, generator=g) * 200 + 25
    image = colours[labels].permute(2, 0, 1) + torch.randn(3, size, size, generator=g) * 6
    one_hot = torch.nn.functional.one_hot(labels, classes).permute(2, 0, 1).float()
    blurred = torch.nn.functional.avg_pool2d(one_hot[None], 9, stride=1, padding=4, count_include_pad=False)
    logits = 6 * blurred + torch.randn(1, classes, size, size, generator=g) * 0.7
    return image[None].clamp(0, 255), labels[None], torch.softmax(logits, 1)


def time_backend(y, image, relaxation, backend, repeats=5):
    def run():
        leaf = y.detach().requires_grad_()
        energy = pottsops.potts_energy(leaf, image, relaxation=relaxation, backend=backend)
        energy.backward()
        return energy
    energy = run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return float(energy.detach()), (time.perf_counter() - start) / repeats * 1e3


def main():
    image, _, y = generated_scene()
    available = [name for name, status in pottsops.backends().items()
                 if status.available and name in ("cpu", "reference")]
    print(f"pottsops {pottsops.__version__}: generated image {tuple(image.shape)}, y {tuple(y.shape)}, nn4, "
          f"sigma_rgb 9")
    for name, status in pottsops.backends().items():
        print(f"  backend {name:9s} {status}")
    alias = {name: a for a, name in RELAXATION_ALIASES.items()}
    header = f"{'relaxation':24s}{'energy':>12s}" + "".join(f"{b + ' ms':>14s}" for b in available)
    print("\n" + header + "\n" + "-" * len(header))
    for relaxation in pottsops.RELAXATIONS:
        results = {b: time_backend(y, image, relaxation, b) for b in available}
        energies = [e for e, _ in results.values()]
        assert max(energies) - min(energies) <= 1e-3 * max(1.0, abs(energies[0])), "backends disagree"
        times = "".join(f"{results[b][1]:14.2f}" for b in available)
        print(f"{relaxation + ' (' + alias[relaxation] + ')':24s}{energies[0]:12.2f}{times}")
    print("\nTimes: forward + backward, mean of 5 runs after one warm-up, this machine's CPU threads: "
          f"{torch.get_num_threads()}.")


if __name__ == "__main__":
    main()
