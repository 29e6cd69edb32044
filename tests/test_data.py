"""Data pipeline: sampler layout and seeds, transforms against numpy/cv2 references, datasets and
their one-line errors, SyntheticShapes, Mixup/Cutmix, and the DataLoader (workers == no workers)."""
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest

from plsc.data import (CIFAR10, CIFAR100, Cutmix, DistributedBatchSampler, ImageFolder,
                       ImageNetDataset, Mixup, MixupCutmix, SyntheticShapes, apply_operators,
                       build_dataloader, build_dataset, collate, create_batch_transform,
                       create_operators, sample_seeds)
from plsc.data import synthetic
from plsc.data.transforms import (CenterCropImage, DecodeImage, ImageDecodeError, NormalizeImage,
                                  RandCropImage, RandFlipImage, ResizeImage, ToCHWImage)
from plsc.errors import ConfigError, DataError
from plsc.registry import BATCH_TRANSFORMS, DATASETS, SAMPLERS, TRANSFORMS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def batches(sampler):
    return [list(b) for b in sampler]


def sampler(n, batch_size, rank=0, world_size=1, split="train", shuffle=True, drop_last=False,
            seed=5):
    return DistributedBatchSampler(Sized(n), batch_size, shuffle, drop_last, rank=rank,
                                   world_size=world_size, seed=seed, split=split)


# ----------------------------------------------------------------------------- sampler

@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_union_is_single_rank_with_double_batch(drop_last):
    for epoch in (0, 3):
        ranks = []
        for r in range(2):
            s = sampler(50, 4, rank=r, world_size=2, drop_last=drop_last)
            s.set_epoch(epoch)
            ranks.append(batches(s))
        single = sampler(50, 8, drop_last=drop_last)
        single.set_epoch(epoch)
        ref = batches(single)
        assert len(ranks[0]) == len(ranks[1]) == len(ref) == len(single)
        for k, batch in enumerate(ref):  # rank r holds the r-th contiguous chunk, seeds included
            assert ranks[0][k] + ranks[1][k] == batch
        assert len(ref) == (6 if drop_last else 7)


def test_train_pads_by_repeating_the_head_like_paddle():
    """10 samples on 3 ranks: 12 slots, the first 2 of the epoch order are repeated."""
    order = np.random.default_rng([5, 0]).permutation(10)
    got = [batches(sampler(10, 2, rank=r, world_size=3)) for r in range(3)]
    assert [len(g) for g in got] == [2, 2, 2] and [len(sampler(10, 2, world_size=3))] == [2]
    padded = np.concatenate([order, order[:2]])
    for k in range(2):
        flat = [i for r in range(3) for i, _ in got[r][k]]
        assert flat == padded[k * 6:(k + 1) * 6].tolist()


@pytest.mark.parametrize("n,world,bs", [(13, 2, 5), (7, 3, 2), (1, 2, 4), (50, 3, 4), (2, 4, 3)])
def test_eval_shards_cover_each_index_exactly_once(n, world, bs):
    seen = []
    for r in range(world):
        s = sampler(n, bs, rank=r, world_size=world, split="eval", shuffle=True, drop_last=True)
        got = batches(s)
        assert len(got) == len(s)
        assert all(0 < len(b) <= bs for b in got)
        seen += [i for b in got for i, _ in b]
    assert sorted(seen) == list(range(n))  # no padding, no drop, no duplicates


def test_set_start_iter_skips_batches_of_the_next_pass_only():
    s = sampler(40, 4, rank=1, world_size=2)
    s.set_epoch(2)
    full = batches(s)
    s.set_start_iter(3)
    assert batches(s) == full[3:]
    assert batches(s) == full  # applies to one pass only
    s.set_start_iter(len(full))
    assert batches(s) == []


def test_epoch_and_seed_change_the_order_and_are_reproducible():
    s = sampler(30, 30)
    s.set_epoch(0)
    e0 = [i for i, _ in batches(s)[0]]
    s.set_epoch(1)
    e1 = [i for i, _ in batches(s)[0]]
    s.set_epoch(0)
    assert [i for i, _ in batches(s)[0]] == e0
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(30))
    assert [i for i, _ in batches(sampler(30, 30, seed=6))[0]] != e0
    assert [i for i, _ in batches(sampler(30, 30, shuffle=False))[0]] == list(range(30))


def test_sample_seed_depends_only_on_seed_epoch_index():
    def seeds(world_size=1, bs=4, split="train"):
        out = {}
        for r in range(world_size):
            s = sampler(24, bs, rank=r, world_size=world_size, split=split)
            s.set_epoch(1)
            for b in s:
                out.update(b)
        return out

    a = seeds()
    assert a == seeds(world_size=2, bs=3) == seeds(world_size=3, bs=8, split="eval")
    s = sampler(24, 4)
    s.set_epoch(1)
    s.set_start_iter(2)
    assert all(a[i] == seed for b in s for i, seed in b)  # resume sees the same seeds
    assert a == dict(zip(range(24), sample_seeds(5, 1, np.arange(24))))
    assert len(set(a.values())) == 24
    assert sample_seeds(5, 2, [3]) != sample_seeds(5, 1, [3]) != sample_seeds(6, 1, [3])
    assert all(0 <= v < 2 ** 63 for v in a.values())


def test_sampler_config_keys_and_errors():
    assert list(SAMPLERS.parameters("DistributedBatchSampler")) == ["batch_size", "shuffle", "drop_last"]
    with pytest.raises(ConfigError, match=r"^DataLoader.Train.sampler.batch_size: expected int >= 1, "
                                          r"got int 0$"):
        SAMPLERS.build({"name": "DistributedBatchSampler", "batch_size": 0},
                       "DataLoader.Train.sampler", dataset=Sized(3))
    with pytest.raises(ConfigError, match="^unknown key 'DistributedBatchSampler.rank'"):
        SAMPLERS.build({"name": "DistributedBatchSampler", "batch_size": 2, "rank": 1},
                       dataset=Sized(3))


# ----------------------------------------------------------------------------- transforms

def image(h=6, w=9, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_normalize_matches_float64_reference():
    img = image()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ref = (img.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
    out = NormalizeImage(scale=1.0 / 255.0, mean=mean, std=std)(img)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 1e-5
    chw = NormalizeImage(scale=1 / 255, mean=mean, std=std, order="chw")(img.transpose(2, 0, 1))
    assert np.abs(chw - ref.transpose(2, 0, 1)).max() < 1e-5
    half = NormalizeImage(mean=[0.5] * 3, std=[0.5] * 3, output_fp16=True)(img)
    assert half.dtype == np.float16 and np.abs(half - (img / 127.5 - 1)).max() < 1e-3
    with pytest.raises(ConfigError, match=r"^NormalizeImage.order: expected one of , hwc, chw, "
                                          r"got str 'xyz'$"):
        TRANSFORMS.build({"name": "NormalizeImage", "order": "xyz"})


@pytest.mark.parametrize("channels,mean,std", [(3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                                               (3, [0.5], [0.5]), (1, [0.2], [0.3]),
                                               (4, [0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 0.0])])
def test_normalize_lookup_table_path_is_bitwise_the_array_math(channels, mean, std):
    """uint8 HWC input goes through a 256-entry table: the same float32 bits as the array math
    (the path float input and CHW order take)."""
    img = np.random.default_rng(0).integers(0, 256, (7, 11, channels), dtype=np.uint8)
    op = NormalizeImage(scale=1.0 / 255.0, mean=mean, std=std)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = (img.astype(np.float32) * np.float32(1 / 255) - np.array(mean, np.float32)) \
            / np.array(std, np.float32)
    out = op(img)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(op(img.astype(np.float32)), expected)


@pytest.mark.parametrize("rgb_flag", [True, False], ids=["opencv>=4.10", "older opencv"])
def test_decode_rgb_is_the_bgr_decode_channel_swapped(rgb_flag, monkeypatch):
    if not rgb_flag:
        monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB", raising=False)
    img = image(20, 30)
    for ext in (".jpg", ".png"):
        data = cv2.imencode(ext, img)[1].tobytes()
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(DecodeImage(to_rgb=True)(data), bgr[:, :, ::-1])
        np.testing.assert_array_equal(DecodeImage(to_rgb=False)(data), bgr)


def test_center_crop_offsets_round_down():
    img = image(7, 10)
    out = CenterCropImage(size=[4, 3])(img)  # [w, h]: rows (7-3)//2=2.., cols (10-4)//2=3..
    assert np.array_equal(out, img[2:5, 3:7])
    assert np.array_equal(CenterCropImage(size=5)(img), img[1:6, 2:7])
    with pytest.raises(DataError, match=r"^CenterCropImage: crop 11x11 is larger than the image 10x7"):
        CenterCropImage(size=11)(img)


@pytest.mark.parametrize("hw,short,expected_wh", [((300, 400), 256, (341, 256)),
                                                  ((500, 375), 256, (256, 341)),
                                                  ((224, 224), 256, (256, 256)),
                                                  ((10, 31), 4, (12, 4))])
def test_resize_short_keeps_aspect(hw, short, expected_wh):
    out = ResizeImage(resize_short=short)(np.zeros(hw + (3,), np.uint8))
    assert (out.shape[1], out.shape[0]) == expected_wh


def test_resize_size_squashes_and_matches_cv2():
    img = image(20, 30)
    out = ResizeImage(size=[12, 8], interpolation="bicubic")(img)
    assert np.array_equal(out, cv2.resize(img, (12, 8), interpolation=cv2.INTER_CUBIC))
    assert ResizeImage(size=16)(img).shape == (16, 16, 3)
    assert ResizeImage(size=[12, 8], backend="pil")(img).shape == (8, 12, 3)
    with pytest.raises(ConfigError, match=r"^ResizeImage: set exactly one of 'size' and 'resize_short'"):
        TRANSFORMS.build({"name": "ResizeImage"})
    with pytest.raises(ConfigError, match=r"^ResizeImage.interpolation: expected one of nearest, "
                                          r"bilinear, bicubic, area, lanczos, random or null, "
                                          r"got str 'cubic'$"):
        TRANSFORMS.build({"name": "ResizeImage", "size": 3, "interpolation": "cubic"})


def test_flip_is_identity_or_mirror_with_half_probability():
    img = image()
    flips = 0
    for seed in range(200):
        out = RandFlipImage()(img, np.random.default_rng(seed))
        again = RandFlipImage()(img, np.random.default_rng(seed))
        assert np.array_equal(out, again)
        if np.array_equal(out, img[:, ::-1]):
            flips += 1
        else:
            assert np.array_equal(out, img)
    assert 70 < flips < 130
    vertical = [RandFlipImage(flip_code=0)(img, np.random.default_rng(s)) for s in range(20)]
    assert any(np.array_equal(v, img[::-1]) for v in vertical)


def test_random_crop_respects_scale_and_ratio_bounds():
    op = RandCropImage(size=[20, 10], scale=[0.2, 0.6], ratio=[0.5, 2.0])
    rng = np.random.default_rng(0)
    H, W = 200, 300
    for _ in range(500):
        top, left, h, w = op.crop_box(H, W, rng)
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
        # rounding w and h to ints moves the area by at most (w + h) / 2 + 1/4 pixels
        slack = (w + h) / 2 + 1
        assert 0.2 * H * W - slack <= h * w <= 0.6 * H * W + slack
        assert 0.5 - 1 / h <= w / h <= 2.0 + 1 / h
    out = op(image(200, 300), np.random.default_rng(1))
    assert out.shape == (10, 20, 3)


def test_random_crop_falls_back_to_a_centered_crop_in_ratio_bounds():
    op = RandCropImage(size=8, scale=[0.9, 1.0])  # a 10x1000 strip: no crop of 90% fits 3/4..4/3
    assert op.crop_box(10, 1000, np.random.default_rng(0)) == (0, (1000 - 13) // 2, 10, 13)
    with pytest.raises(ConfigError, match=r"^RandCropImage.scale: expected list of 2 \(float > 0, "
                                          r"float > 0\) \(min <= max <= 1\), got list \[0.5, 0.1\]$"):
        TRANSFORMS.build({"name": "RandCropImage", "size": 8, "scale": [0.5, 0.1]})


def test_decode_image_rgb_bgr_arrays_and_garbage():
    img = image(5, 7)
    ok, png = cv2.imencode(".png", img)  # cv2 writes its input as BGR
    assert np.array_equal(DecodeImage(to_rgb=False)(png.tobytes()), img)
    assert np.array_equal(DecodeImage()(png.tobytes()), img[:, :, ::-1])
    assert DecodeImage(channel_first=True)(png.tobytes()).shape == (3, 5, 7)
    assert DecodeImage()(img) is img  # decoded arrays (CIFAR) pass through
    with pytest.raises(ImageDecodeError, match=r"^cannot decode image \(7 bytes\)$"):
        DecodeImage()(b"garbage")
    assert issubclass(ImageDecodeError, DataError)


def test_create_operators_builds_plsc_lists_and_suggests_names():
    ops = create_operators([{"DecodeImage": {"to_rgb": True}}, {"ResizeImage": {"size": 4}},
                            {"NormalizeImage": {"mean": [0, 0, 0], "std": [1, 1, 1]}},
                            {"ToCHWImage": None}])
    ok, png = cv2.imencode(".png", image(8, 8))
    out = apply_operators(ops, png.tobytes(), np.random.default_rng(0))
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    assert np.array_equal(ToCHWImage()(image()), image().transpose(2, 0, 1))
    with pytest.raises(ConfigError, match=r"unknown transform 'RandFlipImg'.*did you mean 'RandFlipImage'"):
        create_operators([{"RandFlipImg": None}])
    with pytest.raises(ConfigError, match=r"^transform_ops.0: expected a one-key mapping "
                                          r"\{transform name: \{arguments\}\}, got dict"):
        create_operators([{"A": None, "B": None}])
    with pytest.raises(ConfigError, match=r"^unknown key 'transform_ops.0.CenterCropImage.sise'; "
                                          r"did you mean 'transform_ops.0.CenterCropImage.size'\?$"):
        create_operators([{"CenterCropImage": {"sise": 3}}])


def test_config_keys_are_annotated():
    assert list(TRANSFORMS.parameters("RandCropImage")) == ["size", "scale", "ratio", "interpolation", "backend"]
    assert list(DATASETS.parameters("ImageNetDataset")) == [
        "image_root", "cls_label_path", "transform_ops", "multi_label", "class_num", "delimiter",
        "skip_bad_images", "check_files"]
    assert BATCH_TRANSFORMS.parameters("OpSampler") is None  # free keys: its sub-transforms
    for registry in (TRANSFORMS, DATASETS, BATCH_TRANSFORMS):
        for name in registry.names():
            for p in (registry.parameters(name) or {}).values():
                if p.kind is not p.VAR_KEYWORD:
                    assert p.annotation is not p.empty, (name, p.name)


# ----------------------------------------------------------------------------- datasets

def write_jpegs(root, count=4, size=(12, 10)):
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    images = []
    for i in range(count):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[..., i % 3] = 40 + 50 * i  # flat colours survive JPEG almost exactly
        cv2.imwrite(os.path.join(root, "img", f"{i}.jpg"), img)
        images.append(img[:, :, ::-1])  # the RGB the dataset should return
    return images


def write_list(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


NO_AUG = [{"DecodeImage": {"to_rgb": True}}]


def test_imagenet_dataset_reads_real_jpegs(tmp_path):
    rgb = write_jpegs(tmp_path)
    lst = write_list(tmp_path / "list.txt", [f"img/{i}.jpg {i % 2}" for i in range(4)] + [""])
    ds = ImageNetDataset(str(tmp_path), lst, transform_ops=NO_AUG, class_num=2)
    assert len(ds) == 4 and ds.class_names is None
    for i in range(4):
        img, label = ds[(i, 123)]
        assert img.shape == (10, 12, 3) and label == i % 2 and label.dtype == np.int64
        assert np.abs(img.astype(int) - rgb[i]).max() <= 3
    assert np.array_equal(ds[1][0], ds[(1, 9)][0])


def test_imagenet_multi_label_is_multi_hot(tmp_path):
    write_jpegs(tmp_path, 2)
    lst = write_list(tmp_path / "list.txt", ["img/0.jpg 0,3", "img/1.jpg 2"])
    ds = ImageNetDataset(str(tmp_path), lst, transform_ops=NO_AUG, multi_label=True, class_num=5)
    assert ds[0][1].tolist() == [1, 0, 0, 1, 0] and ds[0][1].dtype == np.float32
    assert ds[1][1].tolist() == [0, 0, 1, 0, 0]
    with pytest.raises(ConfigError, match=r"^ImageNetDataset: multi_label: True needs class_num$"):
        DATASETS.build({"name": "ImageNetDataset", "image_root": str(tmp_path),
                        "cls_label_path": lst, "multi_label": True})
    images, labels = collate([ds[0], ds[1]])
    assert labels.dtype == np.float32 and labels.shape == (2, 5) and images.dtype == np.float32


def test_imagenet_dataset_errors_are_one_clear_line(tmp_path):
    write_jpegs(tmp_path, 3)
    root = str(tmp_path)
    good = write_list(tmp_path / "good.txt", ["img/0.jpg 0"])

    def error(*args, **kw):
        with pytest.raises(DataError) as e:
            ImageNetDataset(*args, **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error(root + "/nope", good) == f"image_root '{root}/nope' is not a directory"
    assert error(root, root + "/none.txt") == f"cls_label_path '{root}/none.txt' does not exist"
    bad = write_list(tmp_path / "bad.txt", ["img/0.jpg 0", "", "img/1.jpg one"])
    assert error(root, bad) == (f"{bad}:3: malformed line 'img/1.jpg one'; expected "
                                "'<relative/image/path> <label>'")
    lone = write_list(tmp_path / "lone.txt", ["img/0.jpg"])
    assert error(root, lone) == f"{lone}:1: malformed line 'img/0.jpg'; expected '<relative/image/path> <label>'"
    out = write_list(tmp_path / "out.txt", ["img/0.jpg 0", "img/1.jpg 7"])
    assert error(root, out, class_num=5) == f"{out}:2: label 7 is outside [0, class_num=5)"
    neg = write_list(tmp_path / "neg.txt", ["img/0.jpg -1"])
    assert error(root, neg) == f"{neg}:1: label -1 is negative"
    multi = write_list(tmp_path / "multi.txt", ["img/0.jpg 1,9"])
    assert error(root, multi, multi_label=True, class_num=3) == f"{multi}:1: label 9 is outside [0, class_num=3)"
    missing = write_list(tmp_path / "missing.txt", ["img/0.jpg 0", "img/x.jpg 1", "sub/y.jpg 0"])
    assert error(root, missing) == (f"image file not found: {root}/img/x.jpg (2 of 3 files listed "
                                    f"in {missing} are missing)")
    assert len(ImageNetDataset(root, missing, check_files=False)) == 3
    empty = write_list(tmp_path / "empty.txt", ["", "  "])
    assert error(root, empty) == f"{empty} lists no images"


def test_corrupt_image_error_or_skip(tmp_path):
    write_jpegs(tmp_path, 4)
    (tmp_path / "img" / "1.jpg").write_bytes(b"not a jpeg")
    lst = write_list(tmp_path / "list.txt", [f"img/{i}.jpg {i}" for i in range(4)])
    ds = ImageNetDataset(str(tmp_path), lst, transform_ops=NO_AUG)
    with pytest.raises(DataError, match=rf"^cannot decode image {tmp_path}/img/1.jpg "
                                        r"\(set skip_bad_images: True to skip bad files\)$"):
        ds[(1, 0)]
    skip = ImageNetDataset(str(tmp_path), lst, transform_ops=NO_AUG, skip_bad_images=True)
    img, label = skip[(1, 0)]
    assert label == 2 and np.array_equal(img, skip[(2, 0)][0])  # the next index replaces it
    assert skip.skipped == 1
    skip[(1, 0)]
    assert skip.skipped == 2


def loader_section(dataset, batch_size=2, workers=0, shuffle=False, drop_last=False):
    return {"dataset": dataset,
            "sampler": {"name": "DistributedBatchSampler", "batch_size": batch_size,
                        "shuffle": shuffle, "drop_last": drop_last},
            "loader": {"num_workers": workers, "use_shared_memory": True}}


@pytest.mark.parametrize("workers", [0, 2])
def test_loading_errors_reach_the_caller_as_one_line(tmp_path, workers):
    write_jpegs(tmp_path, 4)
    (tmp_path / "img" / "3.jpg").write_bytes(b"")
    lst = write_list(tmp_path / "list.txt", [f"img/{i}.jpg {i}" for i in range(4)])
    dataset = {"name": "ImageNetDataset", "image_root": str(tmp_path), "cls_label_path": lst,
               "transform_ops": NO_AUG + [{"ToCHWImage": None}]}
    pipe = build_dataloader(loader_section(dataset, workers=workers), "eval")
    with pytest.raises(DataError) as e:
        for _ in pipe:
            pass
    assert str(e.value) == (f"cannot decode image {tmp_path}/img/3.jpg (set skip_bad_images: True "
                            "to skip bad files)")
    # the same with skipping: workers count into the shared counter
    dataset["skip_bad_images"] = True
    pipe = build_dataloader(loader_section(dataset, workers=workers), "eval")
    labels = [y.numpy().tolist() for _, y in pipe]
    assert labels == [[0, 1], [2, 0]]  # index 3 wraps around to index 0
    assert pipe.dataset.skipped == 1


def test_iter_batches_reraises_failures_carried_as_batches():
    from plsc.data.loader import _Failure, iter_batches

    ok = [np.zeros(2), np.zeros(2)]
    it = iter_batches([ok, _Failure(ImageDecodeError("bad file")).as_batch(), ok])
    assert next(it) is ok
    with pytest.raises(DataError, match=r"^bad file$"):
        next(it)
    with pytest.raises(RuntimeError, match=r"(?s)^data loading failed:\n.*ValueError: boom"):
        list(iter_batches([_Failure(ValueError("boom")).as_batch()]))


def test_collate_rejects_mixed_shapes_with_a_hint(tmp_path):
    write_jpegs(tmp_path, 1, size=(12, 10))
    cv2.imwrite(str(tmp_path / "img" / "big.jpg"), np.zeros((20, 20, 3), np.uint8))
    lst = write_list(tmp_path / "list.txt", ["img/0.jpg 0", "img/big.jpg 1"])
    dataset = {"name": "ImageNetDataset", "image_root": str(tmp_path), "cls_label_path": lst,
               "transform_ops": NO_AUG}
    with pytest.raises(DataError, match=r"^images of one batch have different shapes "
                                        r"\(10x12x3, 20x20x3\); add a resize or crop"):
        list(build_dataloader(loader_section(dataset), "eval"))


def test_image_folder_classes_sorted(tmp_path):
    for cls, n in (("dog", 2), ("cat", 1)):
        os.makedirs(tmp_path / cls / "sub")
        for i in range(n):
            cv2.imwrite(str(tmp_path / cls / "sub" / f"{i}.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = ImageFolder(str(tmp_path), transform_ops=NO_AUG)
    assert ds.class_names == ["cat", "dog"] and ds.class_num == 2
    assert [label for _, label in ds.samples] == [0, 1, 1]
    assert ds[(2, 0)][0].shape == (4, 4, 3)
    with pytest.raises(DataError, match="has no class sub-directories"):
        ImageFolder(str(tmp_path / "cat" / "sub"))


def fake_cifar(path, batches, meta_name, meta, label_key, top):
    """A tar.gz in the official python layout; returns {member: (images CHW rows, labels)}."""
    rng = np.random.default_rng(0)
    content = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, n in batches:
            rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, n).tolist()
            add(name, {b"data": rows, label_key: labels, b"batch_label": b"x"})
            content[name] = (rows, labels)
        add(meta_name, meta)
    return content


def test_cifar10_fake_archive(tmp_path):
    names = [f"data_batch_{i}" for i in range(1, 6)]
    path = str(tmp_path / "cifar-10-python.tar.gz")
    content = fake_cifar(path, [(n, 2) for n in names] + [("test_batch", 3)], "batches.meta",
                         {b"label_names": [f"c{i}".encode() for i in range(10)]}, b"labels",
                         "cifar-10-batches-py")
    train = CIFAR10(path, "train", transform_ops=NO_AUG)
    test = CIFAR10(path, "test")
    assert len(train) == 10 and len(test) == 3 and train.class_names[3] == "c3"
    rows, labels = content["data_batch_3"]
    img, label = train[(5, 0)]  # second image of the third batch
    # a row is 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    ref = np.stack([rows[1][c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)], axis=-1)
    assert np.array_equal(img, ref) and img.dtype == np.uint8 and label == labels[1]
    assert test[2][1] == content["test_batch"][1][2]
    with pytest.raises(DataError, match=r"^CIFAR-10 file '.*/none.tar.gz' does not exist \(plsc never downloads"):
        CIFAR10(str(tmp_path / "none.tar.gz"))
    with pytest.raises(ConfigError, match=r"^CIFAR10.mode: expected one of train, test, got str 'val'$"):
        DATASETS.build({"name": "CIFAR10", "data_file": path, "mode": "val"})
    partial = str(tmp_path / "partial.tar.gz")
    fake_cifar(partial, [("data_batch_1", 1)], "batches.meta", {}, b"labels", "x")
    with pytest.raises(DataError, match=r"no 'data_batch_2' inside; expected the python version of CIFAR-10$"):
        CIFAR10(partial)


def test_cifar100_fine_labels(tmp_path):
    path = str(tmp_path / "cifar-100-python.tar.gz")
    content = fake_cifar(path, [("train", 4), ("test", 2)], "meta",
                         {b"fine_label_names": [b"apple"] * 100}, b"fine_labels", "cifar-100-python")
    ds = CIFAR100(path, "train")
    assert len(ds) == 4 and ds.class_names[0] == "apple" and ds.class_num == 100
    assert [int(ds[i][1]) for i in range(4)] == content["train"][1]


# ----------------------------------------------------------------------------- SyntheticShapes

SMALL = dict(class_num=4, num_train=20, num_val=9, image_size=16, seed=3)


def read_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_synthetic_shapes_deterministic_balanced_and_listed(tmp_path):
    assert synthetic.ensure_generated(str(tmp_path / "a"), **SMALL) is True
    assert synthetic.ensure_generated(str(tmp_path / "a"), **SMALL) is False  # reused
    synthetic.ensure_generated(str(tmp_path / "b"), **SMALL)
    a, b = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert a == b and len(a) == 20 + 9 + 4  # same bytes, every file
    assert a["labels.txt"].decode().split() == ["circle", "square", "triangle", "cross"]
    lines = a["train_list.txt"].decode().splitlines()
    assert all(re.fullmatch(r"train/\d{6}\.jpg [0-3]", line) for line in lines)
    counts = np.bincount([int(line.split()[1]) for line in lines])
    assert counts.tolist() == [5, 5, 5, 5]
    ds = SyntheticShapes(str(tmp_path / "a"), split="val", transform_ops=NO_AUG, **SMALL)
    assert len(ds) == 9 and ds.class_names[3] == "cross" and ds.class_num == 4
    img, _ = ds[(0, 0)]
    assert img.shape == (16, 16, 3) and img.std() > 5  # decoded from a real JPEG
    other = dict(SMALL, seed=4)
    synthetic.ensure_generated(str(tmp_path / "c"), **other)
    assert read_tree(tmp_path / "c")["train/000000.jpg"] != a["train/000000.jpg"]
    with pytest.raises(DataError, match=r"was generated with other settings: seed=3 \(wanted 4\); "
                                        "delete it or use another root$"):
        SyntheticShapes(str(tmp_path / "a"), **other)
    with pytest.raises(ConfigError, match=r"^SyntheticShapes.split: expected one of train, val, "
                                          r"got str 'test'$"):
        DATASETS.build({"name": "SyntheticShapes", "root": str(tmp_path / "a"), "split": "test",
                        **SMALL})
    with pytest.raises(ConfigError, match=r"^SyntheticShapes.class_num: expected an int in \[2, 10\], got 11$"):
        synthetic.ensure_generated(str(tmp_path / "d"), class_num=11)


def _generate(root):
    synthetic.ensure_generated(root, **SMALL)


def test_synthetic_generation_is_safe_when_two_processes_race(tmp_path):
    import multiprocessing

    root = str(tmp_path / "race")
    procs = [multiprocessing.get_context("fork").Process(target=_generate, args=(root,))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert os.listdir(tmp_path) == ["race"]  # the loser's temporary copy is gone
    synthetic.ensure_generated(str(tmp_path / "ref"), **SMALL)
    assert read_tree(root) == read_tree(tmp_path / "ref")


def test_synthetic_cli_pregenerates(tmp_path):
    cmd = [sys.executable, "-m", "plsc.data.synthetic", str(tmp_path / "s"), "--class-num", "3",
           "--num-train", "6", "--num-val", "3", "--image-size", "8"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "wrote 6 train + 3 val images (3 classes, 8px)" in r.stdout
    assert "RuntimeWarning" not in r.stderr
    r = subprocess.run(cmd[:-1] + ["9"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: SyntheticShapes root")


# ----------------------------------------------------------------------------- batch transforms

def one_hot_batch(n=6, classes=6, hw=8):
    images = np.random.default_rng(1).normal(size=(n, 3, hw, hw)).astype(np.float32)
    return images, np.arange(n) % classes


def test_mixup_matches_reference_and_labels_sum_to_one():
    images, labels = one_hot_batch()
    for seed in range(20):
        out, soft = Mixup(alpha=0.8, class_num=6)(images, labels, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # replay the draws: lam first, then the permutation
        lam = rng.beta(0.8, 0.8)
        perm = rng.permutation(6)
        assert 0 <= lam <= 1
        assert np.abs(out - (lam * images + (1 - lam) * images[perm])).max() < 1e-5
        ref = lam * np.eye(6)[labels] + (1 - lam) * np.eye(6)[labels[perm]]
        assert np.abs(soft - ref).max() < 1e-6 and soft.dtype == np.float32
        assert np.allclose(soft.sum(1), 1.0)


def test_cutmix_label_weight_is_the_pasted_area():
    images, labels = one_hot_batch()
    for seed in range(30):
        out, soft = Cutmix(alpha=1.0, class_num=6)(images, labels, np.random.default_rng(seed))
        perm = np.random.default_rng(seed)
        perm.beta(1.0, 1.0)
        perm = perm.permutation(6)
        assert np.allclose(soft.sum(1), 1.0)
        for i in range(6):
            if perm[i] == i:
                continue
            from_other = np.all(out[i] == images[perm[i]], axis=0) & ~np.all(out[i] == images[i], axis=0)
            from_self = np.all(out[i] == images[i], axis=0)
            assert np.all(from_other | from_self)
            pasted = from_other.mean()
            assert abs(soft[i, labels[perm[i]]] - pasted) < 1e-6
            assert abs(soft[i, labels[i]] - (1 - pasted)) < 1e-6


def test_batch_transforms_on_paddle_tensors_match_numpy():
    import paddle

    images, labels = one_hot_batch()
    for op in (Mixup(0.8, 6), Cutmix(1.0, 6), MixupCutmix(class_num=6)):
        ref = op(images, labels, np.random.default_rng(4))
        got = op(paddle.to_tensor(images), paddle.to_tensor(labels), np.random.default_rng(4))
        assert got[1].dtype == paddle.float32 and got[1].shape == [6, 6]
        assert np.abs(got[0].numpy() - ref[0]).max() < 1e-6 and np.abs(got[1].numpy() - ref[1]).max() < 1e-6


def test_mixup_cutmix_switches_and_prob_zero_gives_one_hot():
    images, labels = one_hot_batch()
    out, soft = MixupCutmix(prob=0.0, class_num=6)(images, labels, np.random.default_rng(0))
    assert out is images and np.array_equal(soft, np.eye(6)[labels])
    op = MixupCutmix(switch_prob=0.5, class_num=6)
    kinds = set()
    for seed in range(30):
        out, _ = op(images, labels, np.random.default_rng(seed))
        # cutmix keeps some pixels exactly; mixup changes every pixel of a mixed image
        kinds.add("cutmix" if np.any(out == images) else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_create_batch_transform_fills_class_num_and_op_sampler():
    op = create_batch_transform([{"Mixup": {"alpha": 0.5}}], class_num=6)
    assert op.class_num == 6
    sampler_op = create_batch_transform([{"OpSampler": {"Mixup": {"alpha": 0.8, "prob": 0.3},
                                                        "Cutmix": {"alpha": 1.0, "prob": 0.3}}}], 6)
    images, labels = one_hot_batch()
    results = [sampler_op(images, labels, np.random.default_rng(s)) for s in range(40)]
    assert sum(r[0] is images for r in results) > 5  # 40% of batches pass through
    assert all(np.allclose(r[1].sum(1), 1) for r in results)
    with pytest.raises(ConfigError, match=r"^Mixup: class_num is not set"):
        create_batch_transform([{"Mixup": {"alpha": 0.5}}])(images, labels, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"^OpSampler: the probs sum to 1.2, more than 1$"):
        create_batch_transform([{"OpSampler": {"Mixup": {"prob": 0.6}, "Cutmix": {"prob": 0.6}}}], 6)


# ----------------------------------------------------------------------------- loader

@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes") / "s")
    synthetic.ensure_generated(root, **SMALL)
    return root


def shapes_section(root, workers, batch_size=4, split="train"):
    dataset = {"name": "SyntheticShapes", "root": root, "split": split, **SMALL,
               "transform_ops": [{"DecodeImage": {"to_rgb": True}},
                                 {"RandCropImage": {"size": 12, "scale": [0.3, 1.0]}},
                                 {"RandFlipImage": {"flip_code": 1}},
                                 {"NormalizeImage": {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.5] * 3}},
                                 {"ToCHWImage": None}],
               "batch_transform_ops": [{"Cutmix": {"alpha": 1.0}}]}
    return loader_section(dataset, batch_size, workers, shuffle=True, drop_last=True)


def epochs_of(pipe, epochs=(0, 1), start_iter=0):
    out = []
    for epoch in epochs:
        pipe.sampler.set_epoch(epoch)
        pipe.sampler.set_start_iter(start_iter)
        out.append([(x.numpy(), y.numpy()) for x, y in pipe])
    return out


_FORK_AFTER_CV2_THREADS = """
import json, sys
import cv2, numpy as np
from plsc.data import build_dataloader
big = np.zeros((1500, 1500, 3), np.uint8)
cv2.warpAffine(big, np.float32([[1, 0.2, 0], [0, 1, 0]]), (1500, 1500))  # starts OpenCV's pool
print(sum(len(y) for _, y in build_dataloader(json.loads(sys.argv[1]), "eval")))
"""


def test_workers_start_after_the_parent_used_opencv_threads(tmp_path):
    """A threaded cv2 call in the parent (an eval pass without workers, a benchmark) must not
    leave forked workers hanging in OpenCV's thread pool."""
    write_jpegs(tmp_path, 4)
    lst = write_list(tmp_path / "list.txt", [f"img/{i}.jpg {i}" for i in range(4)])
    dataset = {"name": "ImageNetDataset", "image_root": str(tmp_path), "cls_label_path": lst,
               "transform_ops": NO_AUG + [{"ToCHWImage": None}]}
    section = json.dumps(loader_section(dataset, workers=2))
    r = subprocess.run([sys.executable, "-c", _FORK_AFTER_CV2_THREADS, section],
                       capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0 and r.stdout.split()[-1] == "4", r.stdout + r.stderr


def test_workers_yield_the_same_batches_as_no_workers(shapes_root):
    ref_pipe = build_dataloader(shapes_section(shapes_root, 0), "train", seed=11)
    ref = epochs_of(ref_pipe)
    got = epochs_of(build_dataloader(shapes_section(shapes_root, 2), "train", seed=11))
    assert len(ref[0]) == len(ref_pipe) == 5
    for a_epoch, b_epoch in zip(ref, got):
        assert len(a_epoch) == len(b_epoch)
        for (xa, ya), (xb, yb) in zip(a_epoch, b_epoch):
            assert xa.shape == (4, 3, 12, 12) and xa.dtype == np.float32 and ya.dtype == np.int64
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(ref[0][0][0], ref[1][0][0])  # epochs differ
    resumed = epochs_of(build_dataloader(shapes_section(shapes_root, 2), "train", seed=11),
                        epochs=(1,), start_iter=2)[0]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(ref[1][2:], resumed))
    assert ref_pipe.batch_transform.class_num == 4  # Cutmix got the dataset's class_num


def test_two_rank_pipelines_split_the_single_rank_batches(shapes_root):
    single = epochs_of(build_dataloader(shapes_section(shapes_root, 0, batch_size=4), "train", seed=2), (0,))[0]
    ranks = [epochs_of(build_dataloader(shapes_section(shapes_root, 0, batch_size=2), "train",
                                        rank=r, world_size=2, seed=2), (0,))[0] for r in range(2)]
    for k, (x, y) in enumerate(single):
        assert np.array_equal(x, np.concatenate([ranks[0][k][0], ranks[1][k][0]]))
        assert np.array_equal(y, np.concatenate([ranks[0][k][1], ranks[1][k][1]]))


def test_build_dataset_and_loader_config_errors(shapes_root):
    cfg = dict(shapes_section(shapes_root, 0)["dataset"], transform_ops=NO_AUG, colour=1)
    with pytest.raises(ConfigError, match="^unknown key 'dataset.colour'; accepted keys: "):
        build_dataset(cfg)
    section = shapes_section(shapes_root, 0)
    section["loader"]["workers"] = 2
    with pytest.raises(ConfigError, match=r"^unknown key 'DataLoader.Train.loader.workers'"):
        build_dataloader(section, "train")
    with pytest.raises(ConfigError, match=r"^DataLoader.Eval: missing key 'sampler'$"):
        build_dataloader({"dataset": shapes_section(shapes_root, 0)["dataset"]}, "eval")
