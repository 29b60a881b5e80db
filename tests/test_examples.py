"""examples/: the scribble-training example runs a few CPU steps on the shared CamVid data, both ways."""
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


def test_the_three_lines_are_marked():
    with open(os.path.join(ROOT, "examples", "train_scribbles.py")) as f:
        text = f.read()
    assert [f"[soft self-labeling {i}/3]" in text for i in (1, 2, 3)] == [True] * 3
    assert len(text.splitlines()) < 150
