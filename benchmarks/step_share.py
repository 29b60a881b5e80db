"""What the pseudo-labels cost inside a training step, against the network's own step (issue 40 items 2-3).

    python -m benchmarks.step_share [--checkpoint CKPT] [--threads 1 2] [--voc-like-threads 2]
        --out benchmarks/results/step-share

At the paired ACDC study's shape (a batch of 12 crops of 96^2, 4 classes, the study's U-Net): the network's
step (forward, cross-entropy, backward, SGD), soft's solve (cd + cce, nn4, TRAINING_SOLVER_ITERS steps) and
hard's alpha-expansion (bl + ce, nn4, to convergence), medians over the first training batches of the
study's seed, on the logits of its pCE warm-up checkpoint (the problems a training step solves first).  The
checkpoint comes from the study (experiments/results/train/acdc_table4/plan.md: its warm-up of seed 0).
At VOC's training shape (12 x 21 x 256^2, --voc-like-threads) the same three with the trainer's DeepLabV3+
(measure_voc_like).  Writes OUT/results.md.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

import pottsops
from benchmarks import harness
from pottsops import graphcut

STUDY_WARMUP = os.path.join("experiments", "results", "train", "acdc_table4", "finished", "acdc_table4", "warmup",
                            "seed0", "last.pt")


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[reps // 2] * 1e3


def measure(checkpoint, threads, reps=9):
    from experiments.warmup_labels import problems
    from train.model import build_model
    torch.set_num_threads(threads)
    cases, reg = problems(checkpoint, 4)
    logits, batch = cases[0]
    B, K, H, W = logits.shape
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = build_model(K, "unet", 16, batch["image"].shape[1])
    model.load_state_dict(state["model"])
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, target = torch.randn(B, batch["image"].shape[1], H, W), torch.randint(0, K, (B, H, W))

    def network():
        optimiser.zero_grad()
        F.cross_entropy(model(x), target).backward()
        optimiser.step()

    turn = iter(range(1 << 30))

    def solve():
        logits, b = cases[next(turn) % len(cases)]
        pottsops.solve(logits, b["image"], b["seeds"], relaxation="cd", unary="cce", neighborhood="nn4", eta=0.3,
                       lam=reg.lam, sigma_rgb=reg.sigma_rgb, mask=b["mask"], iters=pottsops.nn.TRAINING_SOLVER_ITERS)

    def cut():
        logits, b = cases[next(turn) % len(cases)]
        graphcut.alpha_expansion(logits, b["image"], b["seeds"], eta=0.3, lam=reg.lam, sigma_rgb=reg.sigma_rgb,
                                 mask=b["mask"])
    return {"threads": threads, "shape": f"{B}x{K}x{H}x{W}", "network": median_ms(network, reps),
            "solve": median_ms(solve, reps), "alpha_expansion": median_ms(cut, reps)}


VOC_LIKE = dict(batch=12, classes=21, size=256)


def voc_like_problems():
    """VOC's training shape (12 crops of 256^2, 21 classes) from real images: the centre 256^2 of 12 CamVid
    val images at 480x360 with their scribbles, and logits like a half-trained network's (the ground truth
    blurred under heavy noise, benchmarks.solver_problems.noisy_logits, at 21 classes: CamVid's 11 and 10
    that no pixel has).  There is no VOC data in the evaluation set; this times the shape, not VOC."""
    from benchmarks.solver_problems import load, noisy_logits
    size, K = VOC_LIKE["size"], VOC_LIKE["classes"]
    items = load("camvid", VOC_LIKE["batch"], full_size=True)
    crop = lambda x: x[..., (x.shape[-2] - size) // 2:][..., :size, (x.shape[-1] - size) // 2:][..., :size]  # noqa: E731
    image = torch.stack([crop(i) for _, i, _, _ in items])
    seeds = torch.stack([crop(s) for _, _, _, s in items])
    logits = torch.stack([noisy_logits(crop(l), K, seed) for seed, (_, _, l, _) in enumerate(items)])
    return logits.contiguous(), image.contiguous(), seeds.contiguous()


def measure_voc_like(threads, reps=3):
    """The network's step (the trainer's DeepLabV3+ ResNet-50, no pretrained weights: the same cost), the solve
    and alpha-expansion at the trainer's regulariser defaults, and the solve's gap at its 100 steps to the lowest
    energy of a 1000-step solve from the same start."""
    from train.methods import Regulariser
    from train.model import build_model
    torch.set_num_threads(threads)
    logits, image, seeds = voc_like_problems()
    B, K, H, W = logits.shape
    reg = Regulariser()
    model = build_model(K, "resnet50", 16, 3)
    model.train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, target = torch.randn(B, 3, H, W), torch.randint(0, K, (B, H, W))

    def network():
        optimiser.zero_grad()
        F.cross_entropy(model(x), target).backward()
        optimiser.step()

    options = dict(relaxation=reg.relaxation, unary=reg.unary, neighborhood=reg.neighborhood, eta=reg.eta,
                   lam=reg.lam, sigma_rgb=reg.sigma_rgb)
    solve = lambda iters: pottsops.solve(logits, image, seeds, iters=iters, return_info=True, **options)  # noqa: E731
    (_, short), (_, long) = solve(pottsops.nn.TRAINING_SOLVER_ITERS), solve(1000)
    lower = long.lower
    gap = ((short.best - long.best) / (long.best - lower).clamp(min=1e-12)).clamp(min=0)
    cut = lambda: graphcut.alpha_expansion(logits, image, seeds, eta=reg.eta, lam=reg.lam,  # noqa: E731
                                           sigma_rgb=reg.sigma_rgb)
    return {"threads": threads, "shape": f"{B}x{K}x{H}x{W}", "network": median_ms(network, reps),
            "solve": median_ms(lambda: solve(pottsops.nn.TRAINING_SOLVER_ITERS), reps),
            "alpha_expansion": median_ms(cut, reps), "gap": float(gap.median())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=STUDY_WARMUP)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--voc-like-threads", nargs="*", type=int, default=[2],
                        help="thread counts of the VOC-like shape (12x21x256^2; none: leave it out)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"--checkpoint: {args.checkpoint} is missing: run the ACDC study's warm-up first (its command "
                         "in experiments/results/train/acdc_table4/plan.md makes it), or name another warm-up")
    rows = [measure(args.checkpoint, threads) for threads in args.threads]
    rows += [measure_voc_like(threads) for threads in args.voc_like_threads]
    env = harness.environment(torch.device("cpu"))
    lines = [f"Device: {env['device'].split(',')[0]}; torch {env['torch']}; commit {env['sha']}.  Medians of 9 "
             "(12x4x96x96) and of 3 (12x21x256x256), "
             "ms; the shares are of the network's step.", "",
             "| threads | shape | network step | solve (cd+cce, nn4, 100 steps) | share | its median gap | "
             "α-expansion | share |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap = f"{r['gap']:.3g}" if "gap" in r else "experiments.warmup_labels"
        lines.append(f"| {r['threads']} | {r['shape']} | {r['network']:.0f} | {r['solve']:.0f} | "
                     f"{r['solve'] / r['network']:.0%} | {gap} | {r['alpha_expansion']:.0f} | "
                     f"{r['alpha_expansion'] / r['network']:.0%} |")
    lines += ["", "12x4x96x96: the ACDC study's U-Net and its warm-up's logits (eta 0.3); its solver's gap at 100 steps "
              "is measured on the same warm-ups by experiments.warmup_labels.  12x21x256x256 (VOC-like): the "
              "trainer's DeepLabV3+ ResNet-50 and its regulariser defaults, on 12 CamVid crops with their "
              "scribbles and noisy logits at 21 classes (voc_like_problems); gap: median over the images of "
              "(E - E*) / (E* - L), E* the energy of a 1000-step solve from the same start."]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
