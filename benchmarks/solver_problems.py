"""The problems of the solver benchmark (benchmarks/solver_quality.py): real images with scribbles, two
starts, the energy written independently of the solver, and its lowest known values.

- CamVid val (24 images evenly spaced over the split, half resolution 240x180, 11 classes, scribbles at
  ratio 1.0, sigma_rgb 9) and ACDC (24 slices evenly spaced over patients 081-100, native size, 4 classes,
  real scribbles, sigma_rgb 15), read from the data folder (POTTSOPS_DATA, default ../shared/data).
- Starts: "zero" (zero logits: the scribbles alone) and "noisy": logits 3 * blur_6(one_hot(ground truth)
  + 3 N(0, 1)), a stand-in for a network trained on scribbles (its argmax scores mIoU 0.64 on both sets;
  errors come in blobs, as a network's do).
- The energy of docs/contract.md §6 through the reference ops, and its parts: excess(y) = E(y) - L, with L the
  unary's lower bound (eta times the sum over the unlabeled pixels of min_y H(y, sigma)): the energy less
  what no labelling can change.  With zero logits and cce, L is the whole unary and the excess is the
  Potts energy.  Gaps are relative to the lowest known excess: (E - E*) / (E* - L), or to a thousandth of
  the start's excess where that is larger (an image whose lowest excess is about 0, e.g. scribbles of one
  class only, has no relative gap to speak of).
"""
import csv
import gzip
import os

import numpy as np
import torch
import torch.nn.functional as F

import pottsops
from pottsops.neighborhoods import as_neighborhood

NEIGHBORHOODS = {"nn4": "nn4", "nn8": "nn8", "win2": pottsops.window(2)}
DATASETS = {"camvid": dict(classes=11, sigma_rgb=9.0), "acdc": dict(classes=4, sigma_rgb=15.0)}
STARTS = ("zero", "noisy")
SETTINGS = dict(eta=0.3, lam=6.0)
EPS = 1e-8


def data_root():
    return os.environ.get("POTTSOPS_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def _evenly(names, count):
    """count names evenly spaced over the list (all of them for None)."""
    if count is None or count >= len(names):
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


def _read(path, dtype=np.int64):
    from PIL import Image
    return np.asarray(Image.open(path)).astype(dtype)


def load(dataset, count=24, full_size=False):
    """[(name, image (C, H, W) float32 0..255, labels (H, W), seeds (H, W))] of count images evenly spaced
    over CamVid val (at half resolution, or 480x360 with full_size) or ACDC patients 081-100 (all of them
    for count=None)."""
    from PIL import Image
    root = data_root()
    items = []
    if dataset == "camvid":
        folder = os.path.join(root, "camvid")
        for name in _evenly(sorted(os.listdir(os.path.join(folder, "images", "val"))), count):
            stem = os.path.splitext(name)[0]
            image = Image.open(os.path.join(folder, "images", "val", name)).convert("RGB")
            size = (image.width, image.height) if full_size else (image.width // 2, image.height // 2)
            image = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1)
            labels = Image.open(os.path.join(folder, "labels", "val", stem + ".png")).resize(size, Image.NEAREST)
            seeds = Image.open(os.path.join(folder, "scribbles", "1.0", "val", stem + ".png")).resize(size,
                                                                                                     Image.NEAREST)
            items.append((stem, image, np.asarray(labels).astype(np.int64), np.asarray(seeds).astype(np.int64)))
    else:
        folder = os.path.join(root, "acdc")
        names = [n for n in sorted(os.listdir(os.path.join(folder, "image"))) if 81 <= int(n[7:10]) <= 100]
        for name in _evenly(names, count):
            image = _read(os.path.join(folder, "image", name), np.float32)[None]
            items.append((name[:-4], image, _read(os.path.join(folder, "label", name)),
                          _read(os.path.join(folder, "scribble", name))))
    return [(n, torch.from_numpy(i).contiguous(), torch.from_numpy(l), torch.from_numpy(s)) for n, i, l, s in items]


def noisy_logits(labels, classes, seed):
    """3 * blur_6(one_hot(labels) + 3 N(0, 1)); void pixels (255) get the noise only."""
    g = torch.Generator().manual_seed(seed)
    one_hot = F.one_hot(labels.clamp(max=classes - 1), classes).permute(2, 0, 1).float() * (labels != 255)
    noisy = one_hot + 3.0 * torch.randn(one_hot.shape, generator=g)
    radius, sigma = 18, 6.0
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x * x / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(F.pad(noisy[:, None], (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return 3.0 * blurred[:, 0]


def start_logits(start, labels, classes, seed):
    if start == "zero":
        return torch.zeros(classes, *labels.shape)
    return noisy_logits(labels, classes, seed)


class Problem:
    """One image's solve() arguments (batch of one) and its energy through the reference ops."""

    def __init__(self, dataset, name, image, labels, seeds, start, index, relaxation, unary, neighborhood):
        self.dataset, self.name, self.start = dataset, name, start
        self.relaxation, self.unary, self.nb_id = relaxation, unary, neighborhood
        self.neighborhood = NEIGHBORHOODS[neighborhood]
        classes = DATASETS[dataset]["classes"]
        self.labels = labels
        self.logits = start_logits(start, labels, classes, index)[None]
        self.image, self.seeds = image[None], seeds[None]
        self.kwargs = dict(relaxation=relaxation, unary=unary, neighborhood=self.neighborhood,
                           sigma_rgb=DATASETS[dataset]["sigma_rgb"], **SETTINGS)
        self.seeded = self.seeds != 255
        self.lower = self._lower()
        self.start_energy = self.energy(self.start_labels())

    def gap(self, energy, best):
        """(E - E*) / max(E* - L, 1e-3 (E_start - L))."""
        return (energy - best) / max(best - self.lower, 1e-3 * (self.start_energy - self.lower), 1e-12)

    @property
    def key(self):
        return (self.dataset, self.name, self.start, self.relaxation, self.unary, self.nb_id)

    def energy(self, y):
        """E(y) in float64 through the reference ops (the seeds clamped)."""
        y = y.double()
        unary = pottsops.unary(self.logits.double(), y, self.unary, mask=~self.seeded, reduction="sum",
                               backend="reference")
        potts = pottsops.potts_energy(y, self.image.double(), relaxation=self.relaxation,
                                      neighborhood=self.neighborhood, sigma_rgb=self.kwargs["sigma_rgb"],
                                      backend="reference")
        return float(SETTINGS["eta"] * unary + SETTINGS["lam"] * potts)

    def _lower(self):
        log_sigma = torch.log_softmax(self.logits.double(), 1)
        if self.unary == "rce":
            sigma = log_sigma.exp()
            least = -(sigma * torch.log(sigma + EPS)).sum(1)
        else:
            top = log_sigma.amax(1)
            least = -torch.log(top.exp() + EPS) if self.unary == "cce" else -top
        return float(SETTINGS["eta"] * least[~self.seeded].sum())

    def start_labels(self):
        y = torch.softmax(self.logits, 1)
        one_hot = F.one_hot(self.seeds.clamp(max=y.shape[1] - 1), y.shape[1]).permute(0, 3, 1, 2).float()
        return torch.where(self.seeded[:, None], one_hot, y)

    def check(self, y):
        """'' if y is a valid result (finite, on the simplex, seeds one-hot, energy not above the start's),
        else what is wrong."""
        if not bool(torch.isfinite(y).all()):
            return "not finite"
        if float((y.sum(1) - 1).abs().max()) > 1e-5:
            return "off the simplex"
        if not bool((y.argmax(1)[self.seeded] == self.seeds[self.seeded]).all()):
            return "seeds changed"
        if self.energy(y) > self.start_energy + 1e-6 * abs(self.start_energy):
            return "energy above the start's"
        return ""


def exact_quadratic(problem):
    """The minimiser of the quadratic relaxation with a constant unary (zero logits, cce or ce): a harmonic
    labelling, found with a sparse direct solve (scipy); None for other problems."""
    if problem.relaxation not in ("q", "quadratic") or problem.start != "zero" or problem.unary == "rce":
        return None
    import scipy.sparse as sparse
    import scipy.sparse.linalg as linalg
    nb = as_neighborhood(problem.neighborhood)
    weights = pottsops.affinity(problem.image.double(), nb, sigma_rgb=problem.kwargs["sigma_rgb"])[0].numpy()
    H, W = problem.seeds.shape[1:]
    index = np.arange(H * W).reshape(H, W)
    rows, cols, values = [], [], []
    for e, (dy, dx) in enumerate(nb.offsets):
        h0, h1 = max(0, -dy), H - max(0, dy)
        w0, w1 = max(0, -dx), W - max(0, dx)
        first = index[h0:h1, w0:w1].ravel()
        second = index[h0 + dy:h1 + dy, w0 + dx:w1 + dx].ravel()
        w = weights[e, h0:h1, w0:w1].ravel()
        rows += [first, second]
        cols += [second, first]
        values += [w, w]
    adjacency = sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(H * W, H * W))
    laplacian = sparse.diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency
    seeds = problem.seeds[0].numpy().ravel()
    seeded = seeds != 255
    free = ~seeded
    classes = problem.logits.shape[1]
    y = np.zeros((H * W, classes))
    y[seeded, seeds[seeded]] = 1
    # a tiny pull to uniform fixes the labels of regions that no weight links to a seed (any is optimal)
    system = laplacian[free][:, free] + 1e-12 * sparse.eye(int(free.sum()))
    y[free] = linalg.splu(system.tocsc()).solve(-(laplacian[free][:, seeded] @ y[seeded]) + 1e-12 / classes)
    y = np.clip(y, 0, None)
    y /= y.sum(1, keepdims=True)
    return torch.from_numpy(y.T.reshape(1, classes, H, W))


# bound: where the problem is convex, the highest certified lower bound on its minimum energy seen (a run's
# energy less its Frank-Wolfe duality gap); empty elsewhere
BEST_FIELDS = ["dataset", "image", "start", "relaxation", "unary", "neighborhood", "energy", "lower", "found_by",
               "bound"]


def read_best(path):
    """{key: row} of the lowest known energies."""
    if not os.path.exists(path):
        return {}
    with gzip.open(path, "rt", newline="") as f:
        return {tuple(r[k] for k in BEST_FIELDS[:6]): r for r in csv.DictReader(f)}


def write_best(path, best):
    """Written gzipped (path ends .gz): the file is committed with the results."""
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BEST_FIELDS)
        writer.writeheader()
        writer.writerows(sorted(best.values(), key=lambda r: tuple(r[k] for k in BEST_FIELDS[:6])))


def improve_best(best, problem, energy, found_by, independent=False):
    """Records energy as the problem's lowest known if it is (or, for an independent reference, if it ties:
    the provenance then names the method solve() did not run); returns the lowest known."""
    row = best.get(problem.key)
    if row is None or energy < float(row["energy"]) or independent and energy <= float(row["energy"]):
        bound = row.get("bound", "") if row else ""
        best[problem.key] = dict(zip(BEST_FIELDS, (*problem.key, repr(energy), repr(problem.lower), found_by, bound)))
    return float(best[problem.key]["energy"])
