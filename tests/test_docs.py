"""Every relative link in the README, docs/ and the committed reports points at a file that exists (a moved
file or a link written relative to the wrong folder is caught here, not by a reader)."""
import glob
import math
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def markdown_files():
    patterns = ["README.md", "docs/*.md", "benchmarks/results/*/*.md", "experiments/results/**/*.md"]
    return sorted({p for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)})


def broken_links(paths):
    """'page: target' for every relative link of the pages that points at no file."""
    broken = []
    for path in paths:
        with open(path) as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):  # a web address or an anchor
                continue
            if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))):
                broken.append(f"{os.path.basename(path)}: {target}")
    return broken


def test_every_relative_link_resolves():
    files = markdown_files()
    assert any(p.endswith("README.md") for p in files) and any("/docs/" in p for p in files)
    assert not broken_links(files)


def test_a_broken_link_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "solver.md").write_text("")
    page = tmp_path / "page.md"
    page.write_text("see [the solver](docs/solver.md#top), [a site](https://example.org) and [nothing](missing.md)\n")
    assert broken_links([str(page)]) == ["page.md: missing.md"]


RESULTS_LIMIT = 3_000_000  # bytes of committed results (issue 37: keep all results under 3 MB)
BLOCK = 4096  # a file takes whole blocks on disk: a study's many small files count so


def test_committed_results_stay_under_their_limit():
    """benchmarks/results and experiments/results, as git tracks them, each file counted in whole 4-KiB blocks."""
    listed = subprocess.run(["git", "ls-files", "-z", "benchmarks/results", "experiments/results"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout (git ls-files: {listed.stderr.decode().strip()})")
    files = [name for name in listed.stdout.decode().split("\0") if name]
    sizes = {name: os.path.getsize(os.path.join(ROOT, name)) for name in files
             if os.path.isfile(os.path.join(ROOT, name))}
    total = sum(math.ceil(size / BLOCK) * BLOCK for size in sizes.values())
    largest = sorted(sizes, key=sizes.get)[-3:]
    assert total < RESULTS_LIMIT, f"committed results take {total / 1e6:.2f} MB; largest: {largest}"
