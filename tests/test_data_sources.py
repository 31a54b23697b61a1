"""Data sources (issue 18): image folders and their cache, tensors, torch and Hugging Face datasets, the uint8
store, ZCA, summaries that remember their data, and every bad input as one clear error (exit 2 on the CLI)."""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import distill_apps as da
from distill_apps.cli import main
from distill_apps.data import folder as folder_mod
from distill_apps.data.real import RealData, normalize
from distill_apps.errors import ConfigError, DataError

TINY = "convnet-d2-w16"


def _write(path: Path, arr: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def make_folder(root: Path, classes=("cat", "dog", "eel"), per_class: int = 6, size=(8, 8), grey=False,
                seed: int = 0) -> Path:
    """A flat image folder of PNG and JPEG files: class c has mean brightness rising with c."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            shape = size if grey else (*size, 3)
            arr = np.clip(rng.normal(60 + 70 * c, 20, shape), 0, 255).astype(np.uint8)
            fmt = "JPEG" if i % 2 else "PNG"
            _write(root / name / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}", arr, fmt)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    c = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_APPS_CACHE", str(c))
    return c


def cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "imagefolder").glob("*")) if (cache / "imagefolder").exists() else []


# ---------------------------------------------------------------------- image folders
def test_folder_api_stratified_split_and_metadata(tmp_path, cache):
    root = make_folder(tmp_path / "pets")
    (root / "README.txt").write_text("not an image")
    (root / "cat" / "notes.txt").write_text("not an image either")
    real = da.from_folder(root, progress=False)
    assert real.class_names == ["cat", "dog", "eel"] and real.num_classes == 3
    assert real.stored().dtype == torch.uint8 and real.image_shape == (3, 8, 8)
    assert real.size("train") == 15 and real.size("test") == 3  # round(6 * 0.2) = 1 test image per class
    assert torch.bincount(real.y_test).tolist() == [1, 1, 1]
    src = real.source
    assert src["kind"] == "imagefolder" and src["path"] == str(root.resolve()) and src["layout"] == "stratified"
    assert src["split_seed"] == 0 and src["test_fraction"] == 0.2 and src["ignored_files"] == 2
    assert real.flip_invariant  # colour folder: natural images
    # the pixels are the files' pixels (PNG lossless): find one train image among the PNGs
    pngs = [np.asarray(Image.open(p)).transpose(2, 0, 1) for p in sorted((root / "cat").glob("*.png"))]
    stored = real.stored()[real.y_train == 0].numpy()
    assert any((stored == p).all(axis=(1, 2, 3)).any() for p in pngs)
    # another seed, another split; same seed, same split
    other = da.from_folder(root, split_seed=1, progress=False)
    again = da.from_folder(root, progress=False)
    assert torch.equal(again.stored("test"), real.stored("test"))
    assert not torch.equal(other.stored("test"), real.stored("test"))


def test_folder_cache_hit_is_memory_mapped_and_skips_decoding(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "pets")
    first = da.from_folder(root, progress=False)
    files = cache_files(cache)
    assert len(files) == 1 and files[0].suffix == ".safetensors"

    def no_decode(*a, **k):
        raise AssertionError("decoded again on a cache hit")

    monkeypatch.setattr(folder_mod, "_decode", no_decode)
    second = da.from_folder(root, progress=False)
    assert torch.equal(second.stored(), first.stored()) and torch.equal(second.y_train, first.y_train)
    assert second.memory_mapped
    if sys.platform.startswith("linux"):  # the store is a mapping of the cache file, not a copy in memory
        assert str(files[0]) in Path("/proc/self/maps").read_text()
    # class-by-class sampling reads through the mapping
    g = torch.Generator().manual_seed(0)
    idx = second.sample(2, 3, g)
    assert (second.labels(idx) == 2).all() and second.images(idx).shape == (3, 3, 8, 8)
    # a standard safetensors reader opens the cache file too
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as fh:
        assert {"train/x", "train/y", "test/x", "test/y"} <= set(fh.keys())


def test_folder_cache_invalidated_by_a_changed_folder(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "pets")
    real = da.from_folder(root, progress=False)
    old = cache_files(cache)
    target = sorted((root / "dog").glob("*.png"))[0]
    _write(target, np.full((8, 8, 3), 7, np.uint8))
    os.utime(target, ns=(1, 1))  # a different mtime even on coarse clocks
    changed = da.from_folder(root, progress=False)
    assert changed.source["cache_key"] != real.source["cache_key"]
    assert (changed.stored() == 7).all(axis=(1, 2, 3)).sum() + (changed.stored("test") == 7).all(axis=(1, 2, 3)).sum() == 1
    new = cache_files(cache)
    assert len(new) == 1 and new != old  # the stale cache of the same folder was removed
    # image size and subset options are part of the key
    small = da.from_folder(root, image_size=4, progress=False)
    assert small.image_shape == (3, 4, 4) and small.source["cache_key"] != changed.source["cache_key"]
    assert len(cache_files(cache)) == 2  # another variant of the folder, not a stale state: both are kept


def test_truncated_damaged_or_other_version_cache_is_rebuilt(tmp_path, cache):
    root = make_folder(tmp_path / "pets")
    ref = da.from_folder(root, progress=False).stored().clone()
    path = cache_files(cache)[0]

    def reload_warns(match):
        with pytest.warns(folder_mod.CacheWarning, match=match):
            again = da.from_folder(root, progress=False)
        assert torch.equal(again.stored(), ref)
        assert cache_files(cache) == [path]

    data = path.read_bytes()
    path.write_bytes(data[:-100])
    reload_warns("truncated")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit of pixel data
    path.write_bytes(bytes(data))
    reload_warns("checksum")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    head = data[8:8 + n].decode()
    assert '\\"format_version\\": 1' in head
    path.write_bytes(data[:8] + head.replace('\\"format_version\\": 1', '\\"format_version\\": 0').encode() + data[8 + n:])
    reload_warns("version")


def test_folder_with_train_test_val_splits(tmp_path, cache):
    make_folder(tmp_path / "d" / "train", per_class=4)
    make_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    make_folder(tmp_path / "d" / "val", per_class=1, seed=2)
    real = da.load_dataset(f"imagefolder:{tmp_path / 'd'}", progress=False)
    assert (real.size("train"), real.size("test"), real.size("val")) == (12, 6, 3)
    assert real.source["layout"] == "splits" and real.x_val.shape == (3, 3, 8, 8)
    make_folder(tmp_path / "e" / "train", per_class=2)
    make_folder(tmp_path / "e" / "test", classes=("cat", "dog"), per_class=2)
    with pytest.raises(DataError, match="same class sub-folders"):
        da.from_folder(tmp_path / "e", progress=False)


def test_grey_folder_is_one_channel_without_flips_and_colour_later_widens(tmp_path, cache):
    grey = make_folder(tmp_path / "g", grey=True)
    real = da.from_folder(grey, progress=False)
    assert real.image_shape == (1, 8, 8) and not real.flip_invariant
    assert da.from_folder(grey, flip=True, progress=False).flip_invariant
    _write(grey / "eel" / "zzz.png", np.full((8, 8, 3), 200, np.uint8))  # one colour image, sorted last
    mixed = da.from_folder(grey, progress=False)
    assert mixed.image_shape == (3, 8, 8)


def test_mixed_sizes_need_image_size(tmp_path, cache):
    root = make_folder(tmp_path / "m")
    _write(root / "dog" / "big.png", np.zeros((12, 10, 3), np.uint8))
    with pytest.raises(DataError, match="--image-size") as e:
        da.from_folder(root, progress=False)
    assert "big.png" in str(e.value) and "10x12" in str(e.value)
    assert not list((cache / "imagefolder").glob("*"))  # nothing half-written
    real = da.from_folder(root, image_size=6, progress=False)
    assert real.image_shape == (3, 6, 6)


@pytest.mark.parametrize("case", ["empty", "one-class", "unreadable", "stray-images", "empty-class"])
def test_bad_folders_refused_with_the_fix(tmp_path, cache, case):
    root = tmp_path / "bad"
    root.mkdir()
    if case == "one-class":
        make_folder(root, classes=("only",))
    elif case == "unreadable":
        make_folder(root)
        (root / "dog" / "broken.jpg").write_text("this is not a JPEG")
    elif case == "stray-images":
        _write(root / "a.png", np.zeros((8, 8, 3), np.uint8))
    elif case == "empty-class":
        make_folder(root)
        (root / "fox").mkdir()
    needle = {"empty": "no class sub-folders", "one-class": "one class", "unreadable": "broken.jpg",
              "stray-images": "directly in it", "empty-class": "fox"}[case]
    with pytest.raises(DataError, match=needle):
        da.from_folder(root, progress=False)
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no cache file, no temporary left behind


def test_missing_folder_and_bad_options(tmp_path, cache):
    with pytest.raises(DataError, match="No image folder"):
        da.load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    root = make_folder(tmp_path / "ok")
    with pytest.raises(ConfigError, match="test_fraction"):
        da.from_folder(root, test_fraction=1.5)
    with pytest.raises(ConfigError, match="image folders"):
        da.load_dataset("digits", image_size=16)


def test_max_per_class_keeps_a_seeded_subset(tmp_path, cache):
    root = make_folder(tmp_path / "p", per_class=10)
    real = da.from_folder(root, max_per_class=3, progress=False)
    assert real.class_counts() == [3, 3, 3] and torch.bincount(real.y_test).tolist() == [2, 2, 2]
    assert real.source["max_per_class"] == 3


# ---------------------------------------------------------------------- the CLI on a folder
def test_cli_distill_and_evaluate_an_image_folder(tmp_path, cache, capsys):
    root = make_folder(tmp_path / "pets")
    out = tmp_path / "s.safetensors"
    assert main(["distill", "--dataset", f"imagefolder:{root}", "--method", "dm", "--ipc", "1", "--steps", "1",
                 "--model", TINY, "--out", str(out), "--eval-runs", "1", "--eval-epochs", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "pets" and out.exists() and out.with_suffix(".png").exists()
    meta = da.SyntheticSet.load(out).meta["data"]
    assert meta["source"]["kind"] == "imagefolder" and meta["source"]["path"] == str(root.resolve())
    assert meta["normalization"]["pixels"] == "uint8/255" and meta["transform"] is None
    # evaluate finds the folder from the summary alone
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "1", "--model", TINY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "pets"
    # moved away: exit 2 and the exact option to pass
    root.rename(tmp_path / "moved")
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "1", "--model", TINY]) == 2
    err = capsys.readouterr().err
    assert "not there now" in err and "--dataset imagefolder:" in err
    assert main(["evaluate", str(out), "--dataset", f"imagefolder:{tmp_path / 'moved'}", "--runs", "1",
                 "--epochs", "1", "--model", TINY, "--json"]) == 0


@pytest.mark.parametrize("case", ["empty", "one-class", "unreadable"])
def test_cli_bad_folder_exits_2_and_writes_nothing(tmp_path, cache, capsys, case):
    root = tmp_path / "bad"
    root.mkdir()
    if case == "one-class":
        make_folder(root, classes=("only",))
    elif case == "unreadable":
        make_folder(root)
        (root / "cat" / "zz.png").write_bytes(b"\x89PNG but truncated")
    out = tmp_path / "out" / "s.safetensors"
    assert main(["distill", "--dataset", f"imagefolder:{root}", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("distill-apps: error:") and "Traceback" not in err
    assert not out.parent.exists() and not [p for p in cache.rglob("*") if p.is_file()]


# ---------------------------------------------------------------------- tensors, torch and HF inputs
def test_uint8_store_equals_the_float_pipeline(digits):
    x = torch.randint(0, 256, (40, 3, 5, 5), dtype=torch.uint8)
    y = torch.arange(40) % 4
    real = da.from_tensors(x, y, x[:8], y[:8])
    assert real.stored().dtype == torch.uint8 and real.nbytes() == 48 * 75
    ref, mean, std = normalize(x.float() / 255)
    assert np.allclose(real.mean, mean, atol=1e-6) and np.allclose(real.std, std, atol=1e-6)
    idx = torch.tensor([3, 0, 39])
    assert torch.allclose(real.images(idx), ref[idx], atol=1e-5)
    assert torch.allclose(real.x_train, ref, atol=1e-5)  # the compatibility accessor
    view = real.view("train")
    assert view.shape == (40, 3, 5, 5) and torch.allclose(view[idx], ref[idx], atol=1e-5)
    # the registered loaders keep uint8 too, with the same statistics as before
    assert digits.stored().dtype == torch.uint8 and abs(float(digits.x_train.mean())) < 1e-4


def test_from_tensors_float_nhwc_numpy_and_no_test_split():
    x = np.random.default_rng(0).random((30, 6, 6, 3)).astype(np.float32)
    y = np.arange(30) % 3
    real = da.from_tensors(x, y, flip=False)
    assert real.image_shape == (3, 6, 6) and real.pixels == "float" and real.size("test") == 0
    assert abs(float(real.x_train.mean())) < 1e-4 and not real.flip_invariant
    assert real.source["kind"] == "tensors" and len(real.source["fingerprint"]) == 16
    s = da.distill("random", real, 2, device="cpu", progress=False)
    with pytest.raises(DataError, match="in-memory"):
        da.evaluate(s, runs=1, epochs=1, model=TINY)
    with pytest.raises(DataError, match="no test split"):
        da.evaluate(s, real, runs=1, epochs=1, model=TINY)
    with pytest.raises(DataError, match="labels"):
        da.from_tensors(x, y[:5])
    with pytest.raises(DataError, match="one class"):
        da.from_tensors(x, np.zeros(30, dtype=np.int64))


class PILDigits(torch.utils.data.Dataset):
    """A map-style dataset yielding (PIL image, int) pairs, like torchvision's with no transform."""

    def __init__(self, n: int, offset: int = 0):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        v = (i + self.offset) % 4
        return Image.fromarray(np.full((6, 6), 40 * v + 10, np.uint8)), v


def test_from_torch_pil_tensor_and_torchvision(data_root):
    real = da.from_torch(PILDigits(24), PILDigits(8, 1))
    assert real.image_shape == (1, 6, 6) and real.pixels == "uint8" and real.num_classes == 4
    assert real.source["kind"] == "torch" and real.source["class"].endswith("PILDigits")
    assert torch.equal(real.stored()[:, 0, 0, 0], (40 * (torch.arange(24) % 4) + 10).to(torch.uint8))
    tds = torch.utils.data.TensorDataset(torch.rand(12, 3, 4, 4), torch.arange(12) % 2)
    assert da.from_torch(tds).pixels == "float"
    import torchvision

    mnist = torchvision.datasets.MNIST(str(data_root), train=False)
    small = torch.utils.data.Subset(mnist, range(50))  # item by item: PIL images
    r = da.from_torch(small, small)
    assert r.image_shape == (1, 28, 28) and torch.equal(r.stored()[:, 0], mnist.data[:50])
    fast = da.from_torch(mnist)  # torchvision without transforms: straight from .data / .targets
    assert fast.size("train") == 10000 and fast.class_names[0].startswith("0")
    with_t = torchvision.datasets.MNIST(str(data_root), train=False, transform=torchvision.transforms.ToTensor())
    r2 = da.from_torch(torch.utils.data.Subset(with_t, range(20)))
    assert r2.pixels == "float"  # ToTensor's floats, normalised with their statistics


def test_distill_converts_torch_datasets_and_refuses_unsupported_objects():
    s = da.distill("random", PILDigits(24), 2, device="cpu", progress=False)
    assert s.meta["data"]["source"]["kind"] == "torch" and s.x.shape == (8, 1, 6, 6)
    s2 = da.distill("random", (PILDigits(24), PILDigits(8)), 1, device="cpu", progress=False)
    assert da.evaluate(s2, (PILDigits(24), PILDigits(8)), runs=1, epochs=1, model=TINY).runs == 1
    with pytest.raises(ConfigError, match="from_torch"):
        da.distill("random", torch.utils.data.DataLoader(PILDigits(8)), 1)
    with pytest.raises(ConfigError, match="Unsupported data object"):
        da.distill("random", {"x": 1}, 1)
    with pytest.raises(ConfigError, match="from_tensors"):
        da.distill("random", torch.zeros(4, 1, 2, 2), 1)

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"img": np.zeros((2, 2), np.uint8), "label": i}

    with pytest.raises(ConfigError, match="from_hf"):
        da.from_torch(Dicts())


def test_from_hf_dataset_columns_and_missing_label():
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 255, (5, 5, 3), dtype=np.uint8)) for _ in range(12)]
    ds = datasets.Dataset.from_dict({"img": ims, "fine": [i % 3 for i in range(12)]})
    ds = ds.cast_column("fine", datasets.ClassLabel(names=["a", "b", "c"]))
    real = da.from_hf(ds, image_column="img", label_column="fine", test=ds)
    assert real.image_shape == (3, 5, 5) and real.class_names == ["a", "b", "c"] and real.pixels == "uint8"
    assert np.array_equal(real.stored()[4].numpy(), np.asarray(ims[4]).transpose(2, 0, 1))
    assert real.source["kind"] == "hf" and real.source["label_column"] == "fine"
    with pytest.raises(DataError, match="no label column 'label'") as e:
        da.from_hf(ds, image_column="img")
    assert "fine" in str(e.value)  # the columns it has, and the one that looks like labels
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(6))})
    s = da.distill("random", dd, 1, device="cpu", progress=False)  # image/label columns read from the features
    assert s.meta["data"]["source"]["image_column"] == "img"
    plain = datasets.Dataset.from_dict({"pixels": [np.zeros((2, 2), np.uint8).tolist()] * 2, "y": [0, 1]})
    with pytest.raises(ConfigError, match="from_hf"):
        da.distill("random", plain, 1)


# ---------------------------------------------------------------------- colour, flips and ZCA
def test_flip_settings_and_dsa_colour_ops_per_channel(tmp_path, cache):
    assert not da.load_dataset("digits").flip_invariant
    assert not da.load_dataset("digits", flip=True).with_flip(False).flip_invariant
    assert da.load_dataset("digits", flip=True).flip_invariant
    aug = da.DSA(strategy="color", mode="multi")
    g = torch.Generator().manual_seed(0)
    params = aug.sample(1, g, (4, 4))
    params.saturation[:] = 0.0  # saturation 0: every pixel becomes its grey (channel mean)
    params.brightness[:] = 0.0
    params.contrast[:] = 1.0
    x = torch.rand(2, 3, 4, 4)
    out = aug.apply(x, params)
    assert torch.allclose(out, x.mean(1, keepdim=True).expand_as(x), atol=1e-6)
    grey = torch.rand(2, 1, 4, 4)
    assert torch.allclose(aug.apply(grey, params), grey, atol=1e-6)  # one channel: saturation is the identity


def test_zca_round_trip_whitening_and_summary_reference(tmp_path, cache):
    digits = da.load_dataset("digits")
    white = da.load_dataset("digits", zca=True)
    t = white.transform
    assert t.kind == "zca" and t.reg == 0.1 and t.matrix.shape == (64, 64)
    idx = torch.arange(0, 1347, 7)
    xw = white.images(idx)
    assert torch.allclose(t.invert(xw), digits.images(idx), atol=1e-4)  # round trip
    flat = white.x_train.flatten(1)
    eig = torch.linalg.eigvalsh(torch.cov(flat.T.double()))
    assert eig.max() < 1.0 + 1e-6 and eig.max() > 0.5  # whitened: S / (S + reg) < 1
    assert (cache / "zca").exists()  # fitted once, cached
    s = da.distill("dm", white, 1, steps=1, model=TINY, device="cpu", progress=False)
    spec = s.meta["data"]["transform"]
    assert spec["kind"] == "zca" and spec["sha256"] == t.sha256() and len(spec["probe"]) == 17
    path = s.save(tmp_path / "z.safetensors")
    assert path.stat().st_size < 50_000  # a reference, not the matrix
    loaded = da.SyntheticSet.load(path)
    for data in (None, "digits", digits):  # the transform is applied again however the data is given
        res = da.evaluate(loaded, data, runs=1, epochs=1, model=TINY)
        assert 0 <= res.accuracy_mean <= 1
    other = digits.with_transform(da.data.fit_zca(digits, reg=0.5))
    with pytest.raises(DataError, match="zca"):
        da.evaluate(loaded, other, runs=1, epochs=1, model=TINY)
    plain = da.distill("random", digits, 1, device="cpu", progress=False)
    with pytest.raises(DataError, match="no transform"):
        da.evaluate(plain, white, runs=1, epochs=1, model=TINY)
    with pytest.raises(DataError, match="transform=real.transform"):
        loaded.image_grid(tmp_path / "g.png")
    loaded.image_grid(tmp_path / "g.png", transform=white.transform)
    # a refit gives the same transform (or agrees through the probe): the cached file is checked by hash
    assert da.data.transforms.same_transform(spec, da.data.fit_zca(digits, reg=0.1, cache=False))


def test_cli_zca_distill_then_evaluate_without_dataset(tmp_path, cache, capsys):
    out = tmp_path / "z.safetensors"
    assert main(["distill", "--dataset", "digits", "--zca", "--method", "dm", "--ipc", "1", "--steps", "1",
                 "--model", TINY, "--out", str(out), "--no-eval", "--json"]) == 0
    capsys.readouterr()
    assert da.SyntheticSet.load(out).meta["data"]["transform"]["reg"] == 0.1
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "1", "--model", TINY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "digits"


# ---------------------------------------------------------------------- the real CIFAR-10 (JPEG q75 copy)
def test_cifar10_jpg_folder_end_to_end(data_root, cache):
    root = data_root / "cifar10-jpg"
    if not (root / "train").is_dir():
        pytest.skip(f"no CIFAR-10 image folder at {root}")
    # 20 images per class and split: the whole folder's first decode takes 20-30 s on 2 cores (benchmarks/data_load.py)
    real = da.load_dataset("imagefolder:cifar10-jpg", data_root, max_per_class=20, progress=False)
    assert real.image_shape == (3, 32, 32) and real.class_counts() == [20] * 10 and real.size("test") == 200
    assert real.class_names[:3] == ["airplane", "automobile", "bird"] and real.flip_invariant
    s = da.distill("dm", real, 1, steps=2, model=TINY, device="cpu", progress=False, config={"batch_real": 32})
    res = da.evaluate(s, runs=1, epochs=2, model=TINY)  # found again from the summary's metadata
    assert res.dataset == "cifar10-jpg" and 0 <= res.accuracy_mean <= 1
