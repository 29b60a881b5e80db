"""train/data.py and train/loader.py: parsers on small fixtures (CamVid, ACDC, VOC with PNG and XML
scribbles, folder), the real CamVid/ACDC folders, clear errors for bad data, and the augmentation."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from train import data
from train.loader import TrainBatches, augment

DATA = os.environ.get("POTTSOPS_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def _png(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)


def _scribbles(h, w, cls=1):
    s = np.full((h, w), 255, np.uint8)
    s[1, 1:4] = cls
    return s


def test_camvid_layout(tmp_path):
    for split in ("train", "val"):
        _png(tmp_path / "images" / split / "a.png", np.zeros((6, 8, 3)))
        _png(tmp_path / "labels" / split / "a.png", np.ones((6, 8)))
        _png(tmp_path / "scribbles" / "0.3" / split / "a.png", _scribbles(6, 8, 10))
    sample = data.camvid(str(tmp_path), "val", "0.3")[0]
    assert sample["image"].shape == (3, 6, 8) and sample["image"].dtype == torch.float32
    assert sample["label"].shape == (6, 8) and int(sample["label"][0, 0]) == 1
    assert int(sample["seeds"][1, 2]) == 10 and int((sample["seeds"] != 255).sum()) == 3


def test_acdc_layout_groups_volumes_and_orders_slices(tmp_path):
    for patient, slices in ((21, 12), (81, 2)):
        for s in range(slices):
            name = f"patient{patient:03d}_frame01_slice_{s}.png"
            _png(tmp_path / "image" / name, np.full((5, 7), s))
            _png(tmp_path / "label" / name, np.full((5, 7), 3))
            _png(tmp_path / "scribble" / name, _scribbles(5, 7, 2))
    train = data.acdc(str(tmp_path), (21, 80))
    assert len(train) == 12 and train.channels == 1 and train.num_classes == 4
    assert [train[i]["image"][0, 0, 0].item() for i in range(12)] == list(range(12))  # slice_10 after slice_9
    assert {train[i]["volume"] for i in range(12)} == {"patient021_frame01"}
    assert len(data.acdc(str(tmp_path), (81, 100))) == 2


XML = """<annotation><filename>2007_000032.jpg</filename><size><width>10</width><height>8</height></size>
<polygon><tag>background</tag><point><X>0</X><Y>7</Y></point><point><X>9</X><Y>7</Y></point></polygon>
<polygon><tag>aeroplane</tag><point><X>2</X><Y>2</Y></point><point><X>6</X><Y>2</Y></point>
<point><X>6</X><Y>4</Y></point></polygon>
<polygon><tag>person</tag><point><X>8</X><Y>1</Y></point></polygon></annotation>"""


@pytest.mark.parametrize("scribble_format", ["png", "xml"])
def test_voc_with_scribblesup_scribbles(tmp_path, scribble_format):
    stem = "2007_000032"
    os.makedirs(tmp_path / "JPEGImages")
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(tmp_path / "JPEGImages" / f"{stem}.jpg")
    label = np.zeros((8, 10), np.uint8)
    label[2:5, 2:7] = 1
    _png(tmp_path / "SegmentationClass" / f"{stem}.png", label)
    for split in ("train", "val"):
        os.makedirs(tmp_path / "ImageSets" / "Segmentation", exist_ok=True)
        (tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(stem + "\n")
    if scribble_format == "xml":
        os.makedirs(tmp_path / "scribbles")
        (tmp_path / "scribbles" / f"{stem}.xml").write_text(XML)
    else:
        _png(tmp_path / "scribbles" / f"{stem}.png", _scribbles(8, 10, 15))
    sample = data.voc(str(tmp_path), "train")[0]
    seeds = sample["seeds"]
    assert sample["image"].shape == (3, 8, 10) and int(sample["label"][3, 4]) == 1
    if scribble_format == "xml":
        assert int(seeds[2, 4]) == 1 and int(seeds[3, 6]) == 1  # the aeroplane polyline, both segments
        assert int(seeds[7, 0]) == 0 and int(seeds[7, 9]) == 0  # background stroke end to end
        assert int(seeds[1, 8]) == 15                            # a single point: a dot
        assert int(seeds[5, 0]) == 255
    else:
        assert int(seeds[1, 2]) == 15


def test_voc_xml_with_an_unknown_class_names_it(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(XML.replace("person", "unicorn"))
    with pytest.raises(ValueError, match="names class 'unicorn'"):
        data.read_scribble_xml(str(path), (8, 10), data.VOC_CLASSES)
    path.write_text("<annotation><polygon>")
    with pytest.raises(ValueError, match="not valid XML"):
        data.read_scribble_xml(str(path), (8, 10), data.VOC_CLASSES)


def test_folder_layout_with_and_without_labels(tmp_path):
    _png(tmp_path / "images" / "x.png", np.zeros((4, 4)))
    _png(tmp_path / "scribbles" / "x.png", _scribbles(4, 4, 2))
    sample = data.folder(str(tmp_path), "train", 3, channels=1)[0]
    assert sample["image"].shape == (1, 4, 4) and (sample["label"] == 255).all()
    _png(tmp_path / "labels" / "x.png", np.full((4, 4), 2))
    assert (data.folder(str(tmp_path), "train", 3, channels=1)[0]["label"] == 2).all()


@pytest.mark.parametrize("problem, message", [
    ("missing", "scribbles: no file for 'x'"),
    ("unreadable", "image: cannot read"),
    ("size", r"size \(3, 4\) differs from its image's \(4, 4\)"),
    ("class", "scribbles: .*x.png': class id 7 is not below num_classes=3"),
    ("empty", "has no scribbled pixel"),
    ("rgb label", "label: .*x.png': expected a single-channel PNG"),
    ("unreadable scribbles", r"scribbles: cannot read .*scribbles/x.png"),
])
def test_bad_data_is_named(tmp_path, problem, message):
    _png(tmp_path / "images" / "x.png", np.zeros((4, 4, 3)))
    scribbles = _scribbles(4, 4, 2)
    if problem == "size":
        scribbles = scribbles[:3]
    if problem == "class":
        scribbles[0, 0] = 7
    if problem == "empty":
        scribbles[:] = 255
    if problem != "missing":
        _png(tmp_path / "scribbles" / "x.png", scribbles)
    if problem == "unreadable":
        (tmp_path / "images" / "x.png").write_bytes(b"not a png")
    if problem == "unreadable scribbles":
        (tmp_path / "scribbles" / "x.png").write_bytes(b"not a png")
    if problem == "rgb label":
        _png(tmp_path / "labels" / "x.png", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=message):
        data.folder(str(tmp_path), "train", 3)[0]


def test_no_images_and_no_root(tmp_path):
    os.makedirs(tmp_path / "images")
    with pytest.raises(ValueError, match=r"dataset: no images found in .*images' \(split 'train': images named"):
        data.folder(str(tmp_path), "train", 3)
    os.makedirs(tmp_path / "camvid" / "images" / "val")
    with pytest.raises(ValueError, match=r"dataset: no images found in .*images/val' \(split 'val'"):
        data.camvid(str(tmp_path / "camvid"), "val")
    os.makedirs(tmp_path / "acdc" / "image")
    with pytest.raises(ValueError, match=r"dataset: no images found in .*image' for patients 81-100"):
        data.acdc(str(tmp_path / "acdc"), (81, 100))
    with pytest.raises(ValueError, match="root: expected a folder"):
        data.camvid(str(tmp_path / "nowhere"), "train")


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "acdc")), reason=f"no ACDC under {DATA}")
def test_real_acdc_split_by_patient():
    train, val = data.acdc(os.path.join(DATA, "acdc"), (21, 80)), data.acdc(os.path.join(DATA, "acdc"), (81, 100))
    assert len(train) + len(val) == 1512
    volumes = {item["volume"] for item in val.items}
    assert len(volumes) == 40  # patients 81..100, two frames each
    sample = val[0]
    assert sample["image"].shape[0] == 1 and sample["image"].shape[1:] == sample["seeds"].shape
    assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 3}


@pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "camvid")), reason=f"no CamVid under {DATA}")
def test_real_camvid_splits():
    train = data.camvid(os.path.join(DATA, "camvid"), "train", "0.3")
    assert len(train) == 367
    sample = train[0]
    assert sample["image"].shape == (3, 360, 480) and sample["seeds"].shape == (360, 480)


def test_augment_tracks_padding_with_the_mask():
    sample = {"image": torch.full((3, 5, 6), 100.0), "label": torch.ones(5, 6, dtype=torch.long),
              "seeds": torch.full((5, 6), 2, dtype=torch.long)}
    out = augment(sample, (8, 9), flip=False, generator=torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 8, 9) and out["mask"].shape == (8, 9)
    assert int(out["mask"].sum()) == 30
    assert (out["label"][~out["mask"]] == 255).all() and (out["seeds"][~out["mask"]] == 255).all()
    assert (out["image"][:, ~out["mask"]] == 0).all() and (out["label"][out["mask"]] == 1).all()
    scaled = augment(sample, (4, 4), scale=(2.0, 2.0), generator=torch.Generator().manual_seed(0))
    assert scaled["mask"].all() and (scaled["image"] == 100).all()


def test_batches_reproducible_resumable_and_the_same_resident_or_not():
    dataset = data.GeneratedSet(6, size=16)
    kwargs = dict(scale=(0.7, 1.3), seed=3)
    loaded = TrainBatches(dataset, 2, (12, 12), workers=0, **kwargs)
    resident = TrainBatches(dataset, 2, (12, 12), resident=True, **kwargs)
    first = list(loaded.epoch(1))
    assert len(first) == 3
    for a, b in zip(first, resident.epoch(1)):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    for a, b in zip(first[1:], loaded.epoch(1, start=1)):  # resuming mid-epoch sees the same batches
        assert torch.equal(a["image"], b["image"])
    assert not torch.equal(first[0]["image"], next(loaded.epoch(2))["image"])
    shards = [TrainBatches(dataset, 1, (12, 12), rank=r, world_size=2, **kwargs)._indices(0) for r in (0, 1)]
    assert sorted(i for shard in shards for batch in shard for i in batch) == list(range(6))
    with pytest.raises(ValueError, match="batch_size: 7 is more than the 6"):
        TrainBatches(dataset, 7, (12, 12))


def test_generated_set_has_scribbles_for_every_present_class():
    dataset = data.GeneratedSet(5, size=48)
    for i in range(len(dataset)):
        sample = dataset[i]
        present = set(sample["label"].unique().tolist())
        scribbled = set(sample["seeds"][sample["seeds"] != 255].unique().tolist())
        assert scribbled <= present and len(scribbled) >= 2
        assert (sample["label"][sample["seeds"] != 255] == sample["seeds"][sample["seeds"] != 255]).all()
