"""make demo's first half (python -m pottsops.demo): soft pseudo-labels from scribbles on a generated scene."""
import os
import re

import pytest

from pottsops import demo


def test_demo_solves_the_generated_scene(tmp_path, capsys):
    """The PNG is written, both relaxations lower the energy, and argmax(y) recovers the scene well above
    the 57 % that labelling every pixel background (what a solver that did nothing returns) would score."""
    out = tmp_path / "demo.png"
    demo.main(["--out", str(out)])
    printed = capsys.readouterr().out
    assert os.path.getsize(out) > 10_000
    lines = re.findall(r"(\w+) +energy +([\d.]+) -> +([\d.]+) .*accuracy of argmax\(y\) ([\d.]+) %", printed)
    assert [name for name, *_ in lines] == ["collision_divergence", "bilinear"], printed
    for name, start, best, accuracy in lines:
        assert float(best) < float(start), name
        assert float(accuracy) > 70.0, (name, accuracy)


def test_demo_needs_both_image_and_scribbles():
    with pytest.raises(SystemExit):
        demo.main(["image.png"])


def test_a_missing_optional_dependency_is_named_before_the_work(capsys, monkeypatch):
    """Without matplotlib the demo stops at once naming the extra (it used to fail after the solves)."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit):
        demo.main([])
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "pottsops[train]" in err, err
