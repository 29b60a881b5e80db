"""train/: one training step per method, the losses, the metrics against hand-computed values, the command
line, and resuming after an interrupted run."""
import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pottsops
import train.loop
from train.config import make_config, parse_args
from train.evaluate import confusion_matrix, dice_per_volume, iou_per_class, mean_iou, save_panels
from train.methods import METHODS, Regulariser, batch_loss


def _tiny(tmp_path, **overrides):
    settings = dict(method="soft", epochs=2, batch_size=2, crop=(32, 32), synthetic_size=(4, 2), lr=0.01,
                    out=str(tmp_path / "run"), panels=1, progress=False, workers=0,
                    backbone="mobilenet_v2", solver_iters=5)
    settings.update(overrides)
    return make_config("synthetic", **settings)


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_per_method(tmp_path, method):
    config = _tiny(tmp_path, method=method, max_steps=1)
    results = train.loop.train(config)
    assert results["steps"] == 1 and math.isfinite(results["miou"])
    out = tmp_path / "run"
    for name in ("config.json", "train_log.csv", "last.pt", "results.json", "panels.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["method"] == method


def test_bf16_autocast_channels_last_and_the_resident_loader(tmp_path):
    """The CUDA defaults (bf16 autocast, channels_last, device-resident data) forced on, here on the CPU."""
    config = _tiny(tmp_path, method="soft", max_steps=2, amp="on", channels_last="on", resident="on",
                   warmup=0.0)
    results = train.loop.train(config)
    assert results["steps"] == 2 and math.isfinite(results["miou"])
    losses = [float(line.split(",")[3]) for line in (tmp_path / "run" / "train_log.csv").read_text().split()[1:]]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)


def _batch(k=3, h=6, w=7):
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, k, (2, h, w), generator=g)
    seeds = torch.full_like(label, 255)
    seeds[:, 1, 1:5] = label[:, 1, 1:5]
    mask = torch.ones(2, h, w, dtype=torch.bool)
    mask[1, :, -2:] = False
    return {"image": torch.rand(2, 3, h, w, generator=g) * 255, "label": label, "seeds": seeds, "mask": mask}


def test_losses_by_hand():
    batch = _batch()
    logits = torch.randn(2, 3, 6, 7, requires_grad=True)
    seeded = (batch["seeds"] != 255) & batch["mask"]
    pce = -torch.log_softmax(logits, 1).gather(1, batch["seeds"].clamp(max=2)[:, None])[:, 0][seeded].mean()
    torch.testing.assert_close(batch_loss("pce", logits, batch, Regulariser())[0], pce)
    valid_logits, valid_label = logits.permute(0, 2, 3, 1)[batch["mask"]], batch["label"][batch["mask"]]
    ce = F.cross_entropy(valid_logits, valid_label)
    torch.testing.assert_close(batch_loss("full", logits, batch, Regulariser(full_loss="ce"))[0], ce)
    probs, onehot = torch.softmax(valid_logits, 1), F.one_hot(valid_label, 3).float()
    dice = [(2 * (probs[:, c] * onehot[:, c]).sum() + 1) / (probs[:, c].sum() + onehot[:, c].sum() + 1) for c in (1, 2)]
    torch.testing.assert_close(batch_loss("full", logits, batch, Regulariser())[0], ce + 1 - sum(dice) / 2)
    counts = torch.bincount(valid_label, minlength=3).float()
    balanced = F.cross_entropy(valid_logits, valid_label, weight=counts.sum() / (3 * counts))
    torch.testing.assert_close(batch_loss("full", logits, batch, Regulariser(full_loss="balanced"))[0], balanced)
    torch.testing.assert_close(batch_loss("soft", logits, batch, Regulariser(), warmup=True)[0], pce)
    torch.testing.assert_close(batch_loss("gd", logits, batch, Regulariser(gd_lam=0.0))[0], pce)
    reg = Regulariser(gd_lam=0.5, gd_neighborhood="nn4")
    sigma = torch.softmax(logits, 1)
    grid = sum(_grid_bilinear(sigma, batch["image"], batch["mask"], reg.sigma_rgb, dy, dx) for dy, dx in ((0, 1), (1, 0)))
    torch.testing.assert_close(batch_loss("gd", logits, batch, reg)[0], pce + 0.5 * grid / batch["mask"].sum())
    unlabeled = batch["mask"] & (batch["seeds"] == 255)
    y = torch.softmax(torch.randn(2, 3, 6, 7), 1)
    soft = pce - reg.eta * torch.log((sigma * y).sum(1) + 1e-8)[unlabeled].mean()
    torch.testing.assert_close(pottsops.self_labeling_loss(logits, y, batch["seeds"], mask=batch["mask"],
                                                           normalize="terms"), soft)


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_soft_and_hard_weigh_their_terms_as_eq_8(method):
    """The default network loss of soft and hard is eq. 8's sums over their total weight:
    (sum_S -log sigma[seed] + eta sum_{not S} H(y, sigma)) / (|S| + eta |not S|); normalize='pixels' divides
    by the valid pixels N, normalize='terms' keeps each term a mean over its own pixels; pce is a mean over S
    under each."""
    batch = _batch()
    logits = torch.randn(2, 3, 6, 7, requires_grad=True)
    seeded = (batch["seeds"] != 255) & batch["mask"]
    unlabeled = batch["mask"] & (batch["seeds"] == 255)
    log_sigma = torch.log_softmax(logits, 1)
    seed_sum = -log_sigma.gather(1, batch["seeds"].clamp(max=2)[:, None])[:, 0][seeded].sum()
    reg = Regulariser(eta=0.7, solver_iters=20)
    assert reg.normalize == "weighted"
    loss, y = batch_loss(method, logits, batch, reg)
    if method == "soft":  # cce: -log(sigma . y)
        h = -torch.log((log_sigma.exp() * y).sum(1) + 1e-8)
    else:                 # ce: -sum y log sigma
        h = -(y * log_sigma).sum(1)
    weight = int(seeded.sum()) + 0.7 * int(unlabeled.sum())
    torch.testing.assert_close(loss, (seed_sum + 0.7 * h[unlabeled].sum()) / weight)
    pixels, _ = batch_loss(method, logits, batch, dataclasses.replace(reg, normalize="pixels"))
    torch.testing.assert_close(pixels, (seed_sum + 0.7 * h[unlabeled].sum()) / batch["mask"].sum())
    terms, _ = batch_loss(method, logits, batch, dataclasses.replace(reg, normalize="terms"))
    torch.testing.assert_close(terms, seed_sum / seeded.sum() + 0.7 * h[unlabeled].mean())
    for normalize in ("weighted", "pixels", "terms"):
        torch.testing.assert_close(batch_loss("pce", logits, batch, dataclasses.replace(reg, normalize=normalize))[0],
                                   seed_sum / seeded.sum())


def _grid_bilinear(sigma, image, mask, sigma_rgb, dy, dx):
    """Sum over the pairs (i, i + (dy, dx)) inside the mask of w_ij (1 - sigma_i . sigma_j)."""
    h, w = sigma.shape[2] - dy, sigma.shape[3] - dx
    a, b = sigma[:, :, :h, :w], sigma[:, :, dy:, dx:]
    colour = ((image[:, :, :h, :w] - image[:, :, dy:, dx:]) ** 2).sum(1)
    pair_mask = mask[:, :h, :w] & mask[:, dy:, dx:]
    return (torch.exp(-colour / (2 * sigma_rgb ** 2)) * (1 - (a * b).sum(1)))[pair_mask].sum()


def test_gd_is_the_dense_crf_loss_on_half_size_inputs():
    """gd's default Potts term: bilinear over all pairs of the inputs scaled by 0.5 (sigma_xy too), against
    the all-pairs sum written out; the lattice approximates it (about 10 % on this smooth image)."""
    g = torch.Generator().manual_seed(1)
    smooth = lambda c, scale: F.interpolate(torch.rand(2, c, 6, 5, generator=g) * scale, size=(24, 20), mode="bilinear")
    batch = {"image": smooth(3, 255), "seeds": torch.full((2, 24, 20), 255), "mask": torch.ones(2, 24, 20, dtype=torch.bool)}
    batch["seeds"][:, 2, 2] = 0
    logits = smooth(3, 6)
    reg = Regulariser(gd_lam=1.0, gd_sigma_xy=8.0, gd_sigma_rgb=60.0)
    pce = batch_loss("pce", logits, batch, reg)[0]
    sigma = F.interpolate(torch.softmax(logits, 1), size=(12, 10), mode="bilinear", align_corners=False)
    image = F.interpolate(batch["image"], size=(12, 10), mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    xy = torch.stack([ys.flatten(), xs.flatten()], 1)
    spatial = torch.exp(-torch.cdist(xy, xy) ** 2 / (2 * 4.0 ** 2))
    total = 0.0
    for b in range(2):
        f, s = image[b].flatten(1).T, sigma[b].flatten(1).T
        affinity = spatial * torch.exp(-torch.cdist(f, f) ** 2 / (2 * 60.0 ** 2))
        affinity.fill_diagonal_(0)
        total += 0.5 * (affinity * (1 - s @ s.T)).sum()
    exact = total / (2 * 12 * 10)   # reduction='mean': over the valid pixels of the batch
    potts = (batch_loss("gd", logits, batch, reg)[0] - pce).item()
    assert potts == pytest.approx(float(exact), rel=0.2)


@pytest.mark.parametrize("method", ["gd", "hard", "soft"])
def test_self_labeling_losses_are_finite_and_train_the_logits(method):
    batch = _batch()
    logits = torch.randn(2, 3, 6, 7, requires_grad=True)
    loss, y = batch_loss(method, logits, batch, Regulariser(solver_iters=10))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    if method != "gd":
        torch.testing.assert_close(y.sum(1), torch.ones(2, 6, 7))
        seeded = batch["seeds"] != 255
        assert (y.argmax(1)[seeded] == batch["seeds"][seeded]).all()
    if method == "hard":
        assert set(y.unique().tolist()) == {0.0, 1.0}


@pytest.mark.skipif(pottsops.graphcut.available() is not None, reason="the graph-cut extra (gco-wrapper) is missing")
def test_hard_takes_its_labels_from_alpha_expansion():
    """hard's pseudo-labels are α-expansion's on the grid CRF energy (the paper's baseline); the relaxed
    solver is the variant hard_method='mirror_descent'."""
    batch = _batch()
    logits = torch.randn(2, 3, 6, 7)
    reg = Regulariser(solver_iters=10)
    _, y = batch_loss("hard", logits, batch, reg)
    expected = pottsops.graphcut.alpha_expansion(logits, batch["image"], batch["seeds"], unary="ce", neighborhood="nn4",
                                                 eta=reg.eta, lam=reg.lam, sigma_rgb=reg.sigma_rgb, mask=batch["mask"])
    assert torch.equal(y, expected)
    _, relaxed = batch_loss("hard", logits, batch, dataclasses.replace(reg, hard_method="mirror_descent"))
    assert set(relaxed.unique().tolist()) == {0.0, 1.0}


def test_miou_by_hand():
    label = torch.tensor([[0, 0, 1, 1, 255, 2]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0]])
    matrix = confusion_matrix(pred, label, 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    iou = iou_per_class(matrix)
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0 and math.isnan(iou[3])
    assert mean_iou(matrix) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_dice_per_volume_by_hand():
    pred = torch.tensor([[[1, 1, 0]], [[2, 0, 0]]])   # two slices of one volume
    label = torch.tensor([[[1, 0, 0]], [[2, 2, 0]]])
    scores, per_class, mean = dice_per_volume({"v": (pred, label), "w": (label, label)}, 4)
    assert scores["v"][0] == pytest.approx(2 * 1 / 3) and scores["v"][1] == pytest.approx(2 * 1 / 3)
    assert math.isnan(scores["v"][2])                  # class 3 in neither: not scored
    assert per_class[0] == pytest.approx((2 / 3 + 1) / 2) and math.isnan(per_class[2])
    assert mean == pytest.approx((2 / 3 + 1) / 2)


def test_panels_png(tmp_path):
    row = {"image": torch.rand(1, 8, 9) * 255, "seeds": torch.full((8, 9), 255), "y": torch.softmax(
        torch.randn(3, 8, 9), 0), "pred": torch.zeros(8, 9, dtype=torch.long), "label": torch.ones(8, 9, dtype=torch.long)}
    save_panels(tmp_path / "p.png", [row, dict(row, y=None)])
    from PIL import Image
    panel = Image.open(tmp_path / "p.png")
    assert panel.size == (5 * 9 + 4 * 2, 14 + 2 * (8 + 2))
    assert np.asarray(panel)[:14].min() < 128  # the column titles are drawn


def test_resume_after_an_interrupted_run_ends_with_the_same_weights(tmp_path, monkeypatch):
    straight = _tiny(tmp_path / "a", method="soft", warmup=0.34, epochs=3, checkpoint_every=1, panels=0)
    train.loop.train(straight)
    reference = torch.load(os.path.join(straight.out, "last.pt"), weights_only=False)["model"]

    interrupted = _tiny(tmp_path / "b", method="soft", warmup=0.34, epochs=3, checkpoint_every=1, panels=0)
    real_loss, calls = train.loop.batch_loss, []

    def crash_at_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated interruption mid-epoch")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train.loop, "batch_loss", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train.loop.train(interrupted)
    monkeypatch.setattr(train.loop, "batch_loss", real_loss)
    assert torch.load(os.path.join(interrupted.out, "last.pt"), weights_only=False)["step"] == 3
    interrupted.resume = True
    results = train.loop.train(interrupted)
    assert results["steps"] == 6
    resumed = torch.load(os.path.join(interrupted.out, "last.pt"), weights_only=False)["model"]
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    steps = [line.split(",")[0] for line in open(os.path.join(interrupted.out, "train_log.csv")).read().split()[1:]]
    assert steps == ["1", "2", "3", "4", "5", "6"]  # the log went back to the checkpoint, no duplicates


def test_command_line():
    config = parse_args(["--data", "camvid", "--method", "gd", "--lr", "0.01", "--crop", "64", "96",
                         "--neighborhood", "nn8", "--no-flip"])
    assert config.method == "gd" and config.lr == 0.01 and config.crop == (64, 96) and not config.flip
    assert config.reg.neighborhood == "nn8" and config.reg.eta == 0.3 and config.root.endswith("camvid")
    assert parse_args(["--data", "acdc"]).reg.sigma_rgb == 15.0
    with pytest.raises(ValueError, match="num_classes: --data folder needs --num-classes"):
        parse_args(["--data", "folder", "--root", "x"])
    with pytest.raises(ValueError, match="root: --data voc needs --root"):
        parse_args(["--data", "voc"])
    with pytest.raises(SystemExit):
        parse_args(["--method", "magic"])


def test_every_option_says_what_it_does():
    from train.config import build_parser
    silent = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and not a.help]
    assert silent == []


def test_two_process_ddp_on_cpu(tmp_path):
    """torchrun with two CPU processes (gloo): both train in step, rank 0 alone writes the results."""
    import subprocess
    import sys
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "train", "--data", "synthetic", "--method", "soft", "--epochs", "1", "--batch-size", "2",
               "--crop", "32", "32", "--backbone", "mobilenet_v2", "--solver-iters", "3", "--device", "cpu",
               "--workers", "0", "--panels", "0", "--no-progress", "--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          cwd=os.path.join(os.path.dirname(__file__), ".."))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["steps"] == 64 // 2 // 2  # 64 generated images, 2 ranks, batch 2 per rank


def test_a_truncated_checkpoint_is_named(tmp_path):
    config = _tiny(tmp_path, method="pce", max_steps=1, panels=0)
    train.loop.train(config)
    checkpoint = os.path.join(config.out, "last.pt")
    with open(checkpoint, "r+b") as f:
        f.truncate(os.path.getsize(checkpoint) // 2)
    config.resume = True
    with pytest.raises(RuntimeError, match=r"resume: cannot read the checkpoint '.*last\.pt'"):
        train.loop.train(config)


def test_a_batch_of_one_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="batch_size: expected at least 2 per process"):
        _tiny(tmp_path, batch_size=1)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_sample_found_late_is_named(tmp_path, workers):
    """The fifth of six images is truncated: training stops with an error naming that file."""
    from PIL import Image
    import numpy as np
    for i in range(6):
        for folder, array in (("images", np.full((32, 32, 3), 40 * i, np.uint8)),
                              ("scribbles", np.where(np.arange(32)[:, None] < 4, i % 3, 255).repeat(32, 1))):
            os.makedirs(tmp_path / "data" / folder, exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(tmp_path / "data" / folder / f"{i}.png")
    bad = tmp_path / "data" / "images" / "4.png"
    bad.write_bytes(bad.read_bytes()[:40])
    config = make_config("folder", root=str(tmp_path / "data"), num_classes=3, method="pce", epochs=1,
                         batch_size=2, crop=(32, 32), out=str(tmp_path / "run"), progress=False, workers=workers,
                         backbone="mobilenet_v2", panels=0, resident="off")
    with pytest.raises(Exception, match=r"4\.png"):
        train.loop.train(config)


def test_compare_branches_every_method_from_one_warmup_and_tunes_on_val(tmp_path):
    """experiments.train_compare: one pCE warm-up per seed; each method continues from its checkpoint for
    the same steps; the grid runs on the first seed and the best validation value runs on the others;
    finished runs are not repeated; runs.csv / differences.csv / report.md are written."""
    from experiments import train_compare
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["--name", "tiny", "--runs", str(runs), "--out", str(out), "--methods", "pce",
            "soft-q=--method soft --relaxation quadratic", "--grid", "soft-q=eta:0.3,1", "--seeds", "0", "1",
            "--warmup-steps", "2", "--steps", "2", "--pairs", "soft-q-pce", "--",
            "--data", "synthetic", "--backbone", "unet", "--batch-size", "2", "--crop", "32", "32",
            "--synthetic-size", "4", "2", "--test-split", "test", "--panels", "0", "--workers", "0",
            "--device", "cpu", "--solver-iters", "3"]
    os.makedirs(out / "tiny")
    (out / "tiny" / "label_quality.csv").write_text("seed,labels,rv,myo,lv,mean\n0,soft,0.5,0.6,0.7,0.6\n"
                                                    "1,soft,0.3,0.4,0.5,0.4\n")
    train_compare.main(argv)
    rows = list(csv.DictReader(open(out / "tiny" / "runs.csv")))
    assert [(r["method"], r["seed"], r["steps"]) for r in rows] == [("pce", "0", "4"), ("pce", "1", "4"),
                                                                     ("soft-q", "0", "4"), ("soft-q", "1", "4")]
    tuning = list(csv.DictReader(open(out / "tiny" / "tuning.csv")))
    assert [t["setting"] for t in tuning] == ["--eta 0.3", "--eta 1"]
    best = max(tuning, key=lambda t: float(t["tune_dice"]))["setting"]
    assert rows[2]["setting"] == rows[3]["setting"] == best
    assert not (runs / "tiny" / "soft-q" / ("eta1" if best.endswith("0.3") else "eta0.3") / "seed1").exists()
    config = json.loads((runs / "tiny" / "soft-q" / best.replace("--", "").replace(" ", "") / "seed1" /
                         "config.json").read_text())
    assert config["reg"]["relaxation"] == "quadratic" and config["start_from"].endswith("last.pt")
    log = list(csv.DictReader(open(runs / "tiny" / "soft-q" / best.replace("--", "").replace(" ", "") / "seed1" /
                                   "train_log.csv")))
    assert [int(r["step"]) for r in log] == [3, 4]  # steps 1-2 are the warm-up's
    differences = list(csv.DictReader(open(out / "tiny" / "differences.csv")))
    assert [d["pair"] for d in differences] == ["soft-q-pce"] and differences[0]["n_seeds"] == "2"
    report = (out / "tiny" / "report.md").read_text()
    assert "| soft-q |" in report and "| soft | 0.400 | 0.500 | 0.600 | 0.500 | 0.400–0.600 |" in report
    assert "tuning_curves.png" in report and (out / "tiny" / "tuning_curves.png").stat().st_size > 0
    assert "| pair | seeds | RV | Myo | LV |" in report and "| soft-q-pce | 2 |" in report
    stamp = os.path.getmtime(runs / "tiny" / "pce" / "default" / "seed0" / "results.json")
    train_compare.main(argv)  # everything finished: nothing reruns
    assert os.path.getmtime(runs / "tiny" / "pce" / "default" / "seed0" / "results.json") == stamp
    # committed runs keep no checkpoints: a value added to a grid repeats the warm-up, to the same weights
    warm = runs / "tiny" / "warmup" / "seed0" / "last.pt"
    weights = torch.load(warm, weights_only=False)["model"]
    warm.unlink()
    grown = argv[:argv.index("soft-q=eta:0.3,1")] + ["soft-q=eta:0.1,0.3,1"] + argv[argv.index("soft-q=eta:0.3,1") + 1:]
    train_compare.main(grown)
    again = torch.load(warm, weights_only=False)["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert (runs / "tiny" / "soft-q" / "eta0.1" / "seed0" / "results.json").exists()
    assert os.path.getmtime(runs / "tiny" / "pce" / "default" / "seed0" / "results.json") == stamp
    # packed for committing (results and a thinned log gzipped, panels gone), the runs are still finished ones
    table = lambda: [{k: v for k, v in r.items() if k != "seconds_per_step"}  # noqa: E731
                     for r in csv.DictReader(open(out / "tiny" / "runs.csv"))]
    before = table()
    packed = str(runs / "tiny" / "pce" / "default" / "seed0")
    files = {name: train_compare.read_run_file(packed, name) for name in ("config.json", "results.json")}
    log = train_compare.read_log(packed)
    train_compare.main(["--pack"] + grown)
    assert sorted(os.listdir(packed)) == ["last.pt", "run.json.gz"]  # one file: a small file costs a disk block
    assert {name: train_compare.read_run_file(packed, name) for name in files} == files
    (last,) = train_compare.read_log(packed)  # of 2 steps, the thinned log keeps the last
    assert last.keys() == log[-1].keys() and last["step"] == log[-1]["step"]
    assert float(last["loss"]) == pytest.approx(float(log[-1]["loss"]), rel=1e-4)  # to 5 significant digits
    assert table() == before


def test_paired_differences_per_class():
    """Each class's paired difference A - B over the common seeds, with its t interval (worked by hand); a
    class some run lacks (lv of a two-class run: '') gets no columns."""
    from experiments import train_compare
    def run(method, seed, rv, myo, lv):
        return {"method": method, "seed": seed, "test_dice": (rv + myo + (lv or 0)) / 3, "volumes": {"a": 0.5},
                "rv": rv, "myo": myo, "lv": lv}
    runs = [run("soft", 0, 0.7, 0.6, 0.8), run("soft", 1, 0.8, 0.6, 0.8), run("pce", 0, 0.5, 0.6, 0.7),
            run("pce", 1, 0.4, 0.7, 0.7), run("pce", 2, 0.1, 0.1, 0.1)]
    (row,) = train_compare.paired_differences(runs, ["soft-pce"])
    assert row["n_seeds"] == 2 and row["rv_mean"] == pytest.approx(0.3) and row["myo_mean"] == pytest.approx(-0.05)
    # differences 0.2 and 0.4: sd 0.1414, t(0.975, 1 dof) 12.706, half width 12.706 * 0.1414 / sqrt 2 = 1.2706
    assert row["rv_low"] == pytest.approx(0.3 - 1.2706, abs=1e-4) and row["rv_high"] == pytest.approx(1.5706, abs=1e-4)
    assert row["lv_mean"] == pytest.approx(0.1) and row["lv_low"] == row["lv_high"] == pytest.approx(0.1)
    runs[0]["lv"] = ""
    assert "lv_mean" not in train_compare.paired_differences(runs, ["soft-pce"])[0]


def test_compare_tunes_the_product_of_a_methods_grids():
    """Two --grid of one label (learning rate x weight) give one run per pair of values, in a fixed order."""
    from experiments import train_compare
    grids = train_compare.product_grids(["soft=lr:0.01,0.03", "pce=lr:0.1", "soft=eta:0.1,0.3"])
    assert grids == {"soft": [(("--lr", "0.01"), ("--eta", "0.1")), (("--lr", "0.01"), ("--eta", "0.3")),
                              (("--lr", "0.03"), ("--eta", "0.1")), (("--lr", "0.03"), ("--eta", "0.3"))],
                     "pce": [(("--lr", "0.1"),)]}
    assert train_compare.setting_text(grids["soft"][1]) == "--lr 0.01 --eta 0.3"
    with pytest.raises(SystemExit, match="LABEL=FLAG"):
        train_compare.product_grids(["soft-eta-0.1"])
    # a point past an end of the product, once; a repeated one adds nothing
    grown = train_compare.add_grid_points(grids, ["soft=lr:0.1,eta:0.1", "soft=lr:0.01,eta:0.1"])
    assert grown["soft"][4:] == [(("--lr", "0.1"), ("--eta", "0.1"))] and len(grown["soft"]) == 5
    assert train_compare.grid_edges((("--lr", "0.03"), ("--eta", "0.1")), grown["soft"]) == "--eta lowest"
    for bad in ("soft=eta:0.1,lr:0.1", "soft=lr:0.1", "gd=lr:0.1", "soft=lr0.1,eta:0.1"):
        with pytest.raises(SystemExit, match="--grid-point"):
            train_compare.add_grid_points(grids, [bad])


def test_the_report_names_a_choice_at_an_end_of_its_grid():
    """A chosen value is flagged when it is the lowest or highest of its flag's values among the runs that
    ran (an unrun value does not make a choice interior)."""
    from experiments import train_compare
    grid = train_compare.product_grids(["soft=lr:0.01,0.03,0.1", "soft=eta:0.01,0.03"])["soft"]
    assert train_compare.grid_edges((("--lr", "0.03"), ("--eta", "0.01")), grid) == "--eta lowest"
    assert train_compare.grid_edges((("--lr", "0.03"), ("--eta", "0.03")), grid[:4]) == "--lr highest, --eta highest"
    assert train_compare.grid_edges((("--lr", "0.1"),), [(("--lr", "0.1"),)]) == ""  # a grid of one value
    assert train_compare.chosen_text({"chosen": "yes", "edges": ""}) == "yes"
    assert train_compare.chosen_text({"chosen": "", "edges": "--lr lowest"}) == ""


def test_the_late_gain_is_the_rise_over_a_runs_last_steps():
    from experiments import train_compare
    results = {"steps": 1500, "score": 0.80, "history": [{"step": s, "score": v} for s, v in
                                                          ((400, 0.60), (1000, 0.70), (1100, 0.72), (1300, 0.76))]}
    # the last 300 steps (1201-1500): 0.76 and 0.80; the 300 before (901-1200): 0.70 and 0.72
    assert train_compare.late_gain(results, 300) == pytest.approx(0.78 - 0.71)
    assert train_compare.late_gain(results, 100) is None  # no evaluation in steps 1301-1400


def test_the_solver_steps_table_keeps_each_solver_learning_rate_apart(tmp_path):
    from experiments import train_compare
    rows = [{"seed": seed, "lr": lr, "iters": 100, "median_gap": gap, "p90_gap": gap, "seconds_per_batch": 0.1}
            for seed in (0, 1) for lr, gap in (("0.1", 0.04), ("0.3", 0.01))]
    train_compare.write_csv(str(tmp_path / "solver_steps.csv"), rows)
    table = [line for line in train_compare.measured_at_warmup(str(tmp_path)) if line.startswith("| 0.")]
    assert table == ["| 0.1 | 100 | 0.04 | 0.04 | 0.100 |", "| 0.3 | 100 | 0.01 | 0.01 | 0.100 |"]


def test_a_branch_continues_the_warmup_exactly(tmp_path):
    """A pce branch from the warm-up's checkpoint ends with the weights of one uninterrupted pce run."""
    common = dict(method="pce", batch_size=2, crop=(32, 32), steps=4, synthetic_size=(4, 2), progress=False,
                  workers=0, device="cpu", backbone="unet", panels=0, resident="off")
    train.loop.train(make_config("synthetic", out=str(tmp_path / "whole"), **common))
    train.loop.train(make_config("synthetic", out=str(tmp_path / "warm"), max_steps=2, **common))
    train.loop.train(make_config("synthetic", out=str(tmp_path / "branch"),
                                 start_from=str(tmp_path / "warm" / "last.pt"), **common))
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["model"]
    branch = torch.load(tmp_path / "branch" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(whole[k], branch[k]) for k in whole)


def test_paired_statistics():
    from experiments import paired_stats
    mean, low, high = paired_stats.t_interval([0.01, 0.02, 0.03])
    assert mean == pytest.approx(0.02) and low == pytest.approx(0.02 - 4.302653 * 0.01 / 3 ** 0.5, rel=1e-5)
    a = np.array([[0.8, 0.9], [0.7, 0.8]])
    low, high = paired_stats.bootstrap_interval(a, a - 0.05)
    assert low == pytest.approx(0.05) and high == pytest.approx(0.05)
    assert paired_stats.smallest_resolvable([0.01, 0.02, 0.03]) > high - low


def _eval_steps(out):
    with open(os.path.join(out, "eval_log.csv"), newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


@pytest.mark.parametrize("log", ["train_log.csv", "eval_log.csv"])
@pytest.mark.parametrize("resume", [False, True])
def test_an_empty_or_partial_log_a_kill_left_does_not_block_the_folder(tmp_path, log, resume):
    """A SIGKILL right after a log is created leaves it at 0 bytes; later runs into that folder died with
    "TypeError: 'NoneType' object is not iterable".  Now an empty log, a partial header or a partial last row
    is dropped and the run goes on."""
    config = _tiny(tmp_path, method="pce", epochs=2, panels=0, resume=resume)
    os.makedirs(config.out)
    for content in ("", "ste", "step,epoch,lr,loss\n1,0,0.0"):
        with open(os.path.join(config.out, log), "w") as f:
            f.write(content)
        results = train.loop.train(config)
        assert results["steps"] == 4
        if not resume:
            with open(os.path.join(config.out, "train_log.csv"), newline="") as f:
                assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
            assert _eval_steps(config.out) == [2]


def test_the_evaluation_log_agrees_with_the_checkpoint_after_a_kill_before_it(tmp_path, monkeypatch):
    """An evaluation row is appended before the checkpoint that records it: a kill between the two (4 of 5
    real kills at the epoch's end with --checkpoint-every dividing the epoch) left the resumed run's log with
    that epoch twice (steps [4, 4, 8]).  Now the log keeps the rows the checkpoint recorded."""
    straight = _tiny(tmp_path / "a", method="pce", epochs=3, checkpoint_every=2, panels=0)
    train.loop.train(straight)
    killed = _tiny(tmp_path / "b", method="pce", epochs=3, checkpoint_every=2, panels=0)
    real_print = train.loop._print

    def kill_after_the_first_evaluation(rank, text):
        real_print(rank, text)
        if text.startswith("epoch 1:"):  # the row is in eval_log.csv, the end-of-epoch checkpoint not written
            raise KeyboardInterrupt("killed between the evaluation row and its checkpoint")
    monkeypatch.setattr(train.loop, "_print", kill_after_the_first_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train.loop.train(killed)
    monkeypatch.setattr(train.loop, "_print", real_print)
    assert _eval_steps(killed.out) == [2]
    killed.resume = True
    train.loop.train(killed)
    assert _eval_steps(killed.out) == _eval_steps(straight.out) == [2, 4]
    reference = torch.load(os.path.join(straight.out, "last.pt"), weights_only=False)
    resumed = torch.load(os.path.join(killed.out, "last.pt"), weights_only=False)
    assert resumed["history"] == [{**h, "train_seconds": resumed["history"][i]["train_seconds"]}
                                  for i, h in enumerate(reference["history"])]
    for name, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)


def test_a_kill_while_the_results_are_written_leaves_no_results(tmp_path, monkeypatch):
    """A study takes a run with results.json as finished: a kill during its write must not leave half of one
    (it left a truncated file, which the study then failed to read instead of resuming the run).  Resumed
    from its last checkpoint, the run takes no further step (it took one: step 1801 of 1800 in the table-4
    study)."""
    config = _tiny(tmp_path, method="pce", max_steps=1, panels=0)
    real_dump = train.loop.json.dump

    def killed_midway(value, f, **kwargs):
        if "results.json" not in f.name:  # config.json at the start
            return real_dump(value, f, **kwargs)
        f.write(json.dumps(value)[:20])
        raise KeyboardInterrupt("killed while results.json was written")
    monkeypatch.setattr(train.loop.json, "dump", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        train.loop.train(config)
    monkeypatch.setattr(train.loop.json, "dump", real_dump)
    assert not os.path.exists(os.path.join(config.out, "results.json"))
    config.resume = True
    assert train.loop.train(config)["steps"] == 1 and json.load(open(os.path.join(config.out, "results.json")))


def test_a_file_that_is_not_a_checkpoint_of_this_run_is_named(tmp_path):
    config = _tiny(tmp_path, method="pce", max_steps=1, panels=0)
    train.loop.train(config)
    path = os.path.join(config.out, "last.pt")
    other = _tiny(tmp_path, method="pce", max_steps=2, panels=0, resume=True, backbone="unet")
    with pytest.raises(ValueError, match=r"resume: the checkpoint .*last.pt' is of another network "
                                         r"\(\{'backbone': 'mobilenet_v2'.*'unet'"):
        train.loop.train(other)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"resume: .*last.pt' is not a checkpoint of python -m train \(it has no "
                                         r"model, optimizer"):
        train.loop.train(dataclasses.replace(config, resume=True))
    start = _tiny(tmp_path / "c", method="pce", max_steps=1, panels=0, start_from=path)
    with pytest.raises(ValueError, match="start_from: .* is not a checkpoint"):
        train.loop.train(start)


def test_stale_checkpoint_temporaries_are_removed_at_start(tmp_path):
    """A kill during a checkpoint's write leaves last.pt.tmpPID (15 MB for the U-Net), one during a log's
    rewrite NAME.csv.tmpPID: removed when its process is gone; one of a live process (another run writing into
    the folder) is left."""
    config = _tiny(tmp_path, method="pce", max_steps=1, panels=0)
    os.makedirs(config.out)
    import subprocess
    import sys
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = (os.path.join(config.out, f"last.pt.tmp{pid}") for pid in (int(gone.stdout), os.getppid()))
    stale_log = os.path.join(config.out, f"train_log.csv.tmp{int(gone.stdout)}")  # a kill inside _keep_rows
    for path in (stale, live, stale_log):
        open(path, "wb").close()
    train.loop.train(config)
    assert not os.path.exists(stale) and not os.path.exists(stale_log) and os.path.exists(live)


def test_without_the_data_folder_the_trainer_says_where_to_get_it_without_a_traceback(tmp_path):
    """Issue 39: from a clone without the evaluation data, `python -m train --data acdc` ended in a traceback."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for args, env in ((["--root", str(tmp_path / "nowhere")], {}), ([], {"POTTSOPS_DATA": str(tmp_path)})):
        run = subprocess.run([sys.executable, "-m", "train", "--data", "acdc", *args], cwd=root, capture_output=True,
                             text=True, env={**os.environ, **env}, timeout=300)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert "python -m train: root: no acdc data at" in run.stderr and "POTTSOPS_DATA" in run.stderr
        assert "docs/trainer.md, 'Data'" in run.stderr


def test_the_time_budget_covers_the_evaluations_during_the_run(tmp_path, monkeypatch):
    """Issue 39: --time-budget 60 trained 2 steps and then evaluated for 12 minutes.  The evaluations during
    the run now count against the budget (the final one runs after it).  On the loop's own clock (a fake one,
    so that a busy machine changes nothing) a step costs 1 ms, each evaluation 3 s, the budget is 5 s: the
    evaluations after epochs 1 and 2 (2 steps each) spend it, so the run stops in epoch 3, where training
    alone would have finished its 10 steps."""
    import types
    clock = [0.0]

    def perf_counter():
        clock[0] += 1e-3
        return clock[0]
    real_evaluate = train.loop.evaluate

    def slow_evaluate(*args, **kwargs):
        clock[0] += 3.0
        return real_evaluate(*args, **kwargs)
    monkeypatch.setattr(train.loop, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(train.loop, "evaluate", slow_evaluate)
    config = _tiny(tmp_path, method="pce", epochs=5, time_budget=5.0, panels=0)
    results = train.loop.train(config)
    assert results["steps"] == 5 and 6.0 <= results["evaluation_seconds"] < 6.1, results
