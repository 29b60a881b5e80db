"""The CamVid loader and metrics of experiments/solver_camvid.py on the real data (../shared/data)."""
import os

import pytest
import torch

from experiments import solver_camvid

DATA = os.environ.get("POTTSOPS_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "camvid")), reason=f"no CamVid under {DATA}")
def test_camvid_loader_at_half_resolution():
    images, labels, seeds = solver_camvid.load_camvid(DATA, limit=2)
    assert images.shape == (2, 3, 180, 240) and labels.shape == seeds.shape == (2, 180, 240)
    assert 0 <= float(images.min()) and float(images.max()) <= 255
    for ids in (labels, seeds):
        valid = ids[ids != 255]
        assert valid.numel() and int(valid.max()) < solver_camvid.K
    assert 0.005 < float((seeds != 255).float().mean()) < 0.2  # scribbles: a few percent of the pixels


def test_miou_by_hand():
    label = torch.tensor([[0, 0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0]])
    score, iou = solver_camvid.miou(solver_camvid.confusion(pred, label, k=3))
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(2 / 3)
    assert score == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 2 never occurs: left out of the mean
