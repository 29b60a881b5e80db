"""What the pseudo-labels cost inside a training step, against the network's own step (issue 40 items 2-3).

    python -m benchmarks.step_share [--checkpoint CKPT] [--threads 1 2] --out benchmarks/results/step-share

At the paired ACDC study's shape (a batch of 12 crops of 96^2, 4 classes, the study's U-Net): the network's
step (forward, cross-entropy, backward, SGD), soft's solve (cd + cce, nn4, TRAINING_SOLVER_ITERS steps) and
hard's alpha-expansion (bl + ce, nn4, to convergence), medians over the first training batches of the
study's seed, on the logits of its pCE warm-up checkpoint (the problems a training step solves first).  The
checkpoint comes from the study (experiments/results/train/acdc_table4/plan.md: its warm-up of seed 0).
Writes OUT/results.md.
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=STUDY_WARMUP)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"--checkpoint: {args.checkpoint} is missing: run the ACDC study's warm-up first (its command "
                         "in experiments/results/train/acdc_table4/plan.md makes it), or name another warm-up")
    rows = [measure(args.checkpoint, threads) for threads in args.threads]
    env = harness.environment(torch.device("cpu"))
    lines = [f"Device: {env['device'].split(',')[0]}; torch {env['torch']}; commit {env['sha']}.  Medians of 9, "
             "ms; the shares are of the network's step.", "",
             "| threads | shape | network step | solve (cd+cce, nn4, 100 steps) | share | α-expansion | share |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['shape']} | {r['network']:.0f} | {r['solve']:.0f} | "
                     f"{r['solve'] / r['network']:.0%} | {r['alpha_expansion']:.0f} | "
                     f"{r['alpha_expansion'] / r['network']:.0%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
