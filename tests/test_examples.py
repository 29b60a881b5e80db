"""examples/: the scribble-training example runs a few CPU steps on generated scenes and on the shared CamVid
data, both ways, at the defaults the trainer uses."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAMVID = os.path.join(ROOT, "..", "shared", "data", "camvid")


def _example():
    spec = importlib.util.spec_from_file_location("train_scribbles", os.path.join(ROOT, "examples", "train_scribbles.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not os.path.isdir(CAMVID), reason="../shared/data/camvid is not beside this checkout")
@pytest.mark.parametrize("method", ["pce", "soft"])
def test_train_scribbles_runs(method, capsys):
    _example().main(["--data", CAMVID, "--method", method, "--steps", "3", "--warmup", "1", "--batch-size", "2",
                     "--size", "48", "64", "--limit", "4"])
    out = capsys.readouterr().out
    assert f"{method}: val mIoU" in out and "after 3 steps" in out


@pytest.mark.parametrize("method", ["pce", "soft"])
def test_train_scribbles_runs_on_generated_scenes(method, capsys):
    """No --data: generated scenes, nothing outside the repository; a line per step with the time left."""
    _example().main(["--method", method, "--steps", "2", "--warmup", "1", "--batch-size", "2", "--limit", "4"])
    out = capsys.readouterr().out
    assert f"{method}: val mIoU" in out and "after 2 steps" in out and "s left" in out


def test_one_default_per_idea():
    """The example's loss, pottsops.nn.SoftSelfLabelingLoss and the trainer's soft: the same eta, lambda,
    relaxation, unary, weighting (eq. 8) and solver steps."""
    import pottsops
    from train.methods import Regulariser
    module = _example()
    loss = pottsops.nn.SoftSelfLabelingLoss()
    reg = Regulariser()
    assert (loss.eta, loss.lam, loss.relaxation, loss.unary, loss.normalize, loss.solver_options["iters"]) == \
        (reg.eta, reg.lam, reg.relaxation, reg.unary, reg.normalize, reg.solver_iters)
    with open(module.__file__) as f:
        assert "SoftSelfLabelingLoss(eta=0.3, lam=6.0)" in f.read()
    assert (reg.eta, reg.lam) == (0.3, 6.0)


def test_the_three_lines_are_marked():
    with open(os.path.join(ROOT, "examples", "train_scribbles.py")) as f:
        text = f.read()
    assert [f"[soft self-labeling {i}/3]" in text for i in (1, 2, 3)] == [True] * 3
    assert len(text.splitlines()) < 150
