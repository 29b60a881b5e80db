"""Training batches: random scale, crop (padding tracked by `mask`) and flip, reproducible per
(seed, epoch, sample) so that a run resumed mid-epoch sees exactly the batches it would have seen.

Two paths with the same augmentation: `resident=True` keeps the whole dataset in device memory and
augments there (no workers, no host-to-device copies: the fast path for CamVid/ACDC-sized sets on a GPU);
otherwise a torch DataLoader reads and augments in worker processes.  Under DDP each rank takes every
world-th sample of the epoch's permutation.
"""
import torch
import torch.nn.functional as F

from train.data import IGNORE


def augment(sample, crop, scale=(1.0, 1.0), flip=True, generator=None):
    """One sample (tensors on any device) -> image (C, h, w) float, label, seeds (h, w) int64 and mask
    (h, w) bool, with (h, w) = crop: rescaled by a factor drawn from `scale`, padded where smaller than
    the crop (mask False, label and seeds 255), cropped at a random place, flipped left-right half the time."""
    image, label, seeds = sample["image"].float(), sample["label"].long(), sample["seeds"].long()
    factor = float(torch.empty(()).uniform_(*scale, generator=generator)) if scale[0] != scale[1] else scale[0]
    if factor != 1.0:
        size = [max(1, round(s * factor)) for s in image.shape[1:]]
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        label, seeds = (_nearest(ids, size) for ids in (label, seeds))
    mask = torch.ones(image.shape[1:], dtype=torch.bool, device=image.device)
    pad_h, pad_w = max(crop[0] - image.shape[1], 0), max(crop[1] - image.shape[2], 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
        label, seeds = (F.pad(ids, (0, pad_w, 0, pad_h), value=IGNORE) for ids in (label, seeds))
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=False)
    top = int(torch.randint(image.shape[1] - crop[0] + 1, (), generator=generator))
    left = int(torch.randint(image.shape[2] - crop[1] + 1, (), generator=generator))
    window = (slice(top, top + crop[0]), slice(left, left + crop[1]))
    image, label, seeds, mask = image[(slice(None),) + window], label[window], seeds[window], mask[window]
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        image, label, seeds, mask = image.flip(-1), label.flip(-1), seeds.flip(-1), mask.flip(-1)
    return {"image": image, "label": label, "seeds": seeds, "mask": mask}


def _nearest(ids, size):
    return F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0].long()


def _generator(seed, epoch, index):
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)


def collate(samples):
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


class _Augmented(torch.utils.data.Dataset):
    """dataset[(epoch, index)] -> augmented sample, its randomness fixed by (seed, epoch, index)."""

    def __init__(self, dataset, crop, scale, flip, seed):
        self.dataset, self.crop, self.scale, self.flip, self.seed = dataset, crop, scale, flip, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        return augment(self.dataset[index], self.crop, self.scale, self.flip, _generator(self.seed, epoch, index))


class TrainBatches:
    """batches = TrainBatches(dataset, 12, (320, 320)); for batch in batches.epoch(e, start=step): ...
    Each batch: image (B, C, h, w), label, seeds (B, h, w), mask (B, h, w) on `device`."""

    def __init__(self, dataset, batch_size, crop, *, scale=(0.5, 2.0), flip=True, seed=0, device="cpu",
                 resident=False, workers=0, rank=0, world_size=1):
        if len(dataset) // world_size < batch_size:
            raise ValueError(f"batch_size: {batch_size} is more than the {len(dataset) // world_size} training "
                             f"samples per process")
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        self.seed, self.rank, self.world_size, self.workers = seed, rank, world_size, workers
        self.augmented = _Augmented(dataset, crop, scale, flip, seed)
        self.resident = None
        if resident:
            self.resident = [{key: _compact(value).to(self.device) for key, value in dataset[i].items()
                              if key in ("image", "label", "seeds")} for i in range(len(dataset))]

    def __len__(self):
        return len(self.dataset) // self.world_size // self.batch_size

    def _indices(self, epoch):
        order = torch.randperm(len(self.dataset), generator=_generator(self.seed, epoch, -1))
        mine = order[self.rank::self.world_size][:len(self) * self.batch_size].tolist()
        return [mine[b * self.batch_size:(b + 1) * self.batch_size] for b in range(len(self))]

    def epoch(self, epoch, start=0):
        """The epoch's batches from batch number `start` on."""
        batches = self._indices(epoch)[start:]
        if self.resident is not None:
            a = self.augmented
            for indices in batches:
                yield collate([augment(self.resident[i], a.crop, a.scale, a.flip, _generator(self.seed, epoch, i))
                               for i in indices])
            return
        loader = torch.utils.data.DataLoader(self.augmented, batch_sampler=[[(epoch, i) for i in b] for b in batches],
                                             num_workers=self.workers, collate_fn=collate,
                                             pin_memory=self.device.type == "cuda",
                                             generator=_generator(self.seed, epoch, -2))  # not the global RNG
        for batch in loader:
            yield {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}


def _compact(tensor):
    """Integer-valued 0..255 tensors as uint8 (a quarter of float32's memory); others unchanged."""
    if tensor.dtype == torch.int64 or (tensor.min() >= 0 and tensor.max() <= 255 and (tensor == tensor.round()).all()):
        return tensor.to(torch.uint8)
    return tensor
