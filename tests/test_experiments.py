"""The real-data loader of the solver benchmark and experiments (benchmarks/solver_problems.py) on
../shared/data, and the mIoU of experiments/solver_camvid.py."""
import os

import pytest
import torch

from benchmarks import solver_problems
from experiments import solver_camvid

DATA = solver_problems.data_root()


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "camvid")), reason=f"no CamVid under {DATA}")
def test_camvid_loader_at_half_resolution():
    items = solver_problems.load("camvid", 3)
    assert [name for name, *_ in items][0] == "0016E5_07959"  # the first val image, then evenly spaced
    for _, image, labels, seeds in items:
        assert image.shape == (3, 180, 240) and labels.shape == seeds.shape == (180, 240)
        assert 0 <= float(image.min()) and float(image.max()) <= 255
        for ids in (labels, seeds):
            valid = ids[ids != 255]
            assert valid.numel() and int(valid.max()) < solver_camvid.K
        assert 0.005 < float((seeds != 255).float().mean()) < 0.2  # scribbles: a few percent of the pixels


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "acdc")), reason=f"no ACDC under {DATA}")
def test_acdc_loader_takes_the_validation_patients():
    items = solver_problems.load("acdc", 4)
    assert all(81 <= int(name[7:10]) <= 100 for name, *_ in items)
    for _, image, labels, seeds in items:
        assert image.shape[0] == 1 and image.shape[1:] == labels.shape == seeds.shape
        assert int(labels.max()) <= 3 and set(seeds.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_noisy_start_is_informative_and_reproducible():
    labels = torch.zeros(40, 50, dtype=torch.long)
    labels[10:30, 10:40] = 2
    labels[0, 0] = 255
    logits = solver_problems.noisy_logits(labels, 4, seed=3)
    assert torch.equal(logits, solver_problems.noisy_logits(labels, 4, seed=3))
    accuracy = float((logits.argmax(0) == labels)[labels != 255].float().mean())
    assert 0.5 < accuracy < 1.0  # right on most pixels, wrong on some


def test_miou_by_hand():
    label = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    score, iou = solver_camvid.miou(solver_camvid.confusion(pred, label, k=3))
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(2 / 3)
    assert score == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 2 never occurs: left out of the mean
