"""Image folders (``imagefolder:<path>``, :func:`from_folder`): one sub-folder per class, decoded once into a cache.

Layout: ``<root>/<class>/<image>`` (split here: a seeded, stratified ``test_fraction`` of every class becomes the
test split), or ``<root>/train/<class>/...`` with ``<root>/test/...`` and/or ``<root>/val/...`` (``val`` is the
test split when there is no ``test``, else kept as the validation split). Class names are the folder names, in
sorted order. Any format Pillow reads; files with other extensions (``README.txt``, ``.DS_Store``) are not images
and are ignored (counted in the metadata); a file with an image extension that does not decode is refused, naming
it, because skipping it would silently change the class balance.

The decoded uint8 images are written once to ``<cache root>/imagefolder/`` as a checksummed safetensors file keyed
by the folder's path, file list, sizes and modification times, the image size and the cache version; a later load
maps that file (pages are read when touched, so a store larger than RAM can be sampled class by class: images are
stored class by class). A changed folder gets a new key and is decoded again; a cache file that is truncated,
damaged or of another version is rebuilt with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import safe_io
from ..errors import ConfigError, DataError, SummaryFormatError
from .real import RealData, channel_stats
from .registry import cache_root, data_root

CACHE_VERSION = 1
KIND = "image-store"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                    ".pnm", ".jfif", ".jp2", ".tga", ".ico")
GREY_MODES = ("1", "L", "LA", "La")
PREFIX = "imagefolder:"


class CacheWarning(UserWarning):
    """A cache file could not be trusted (truncated, damaged, another version) and is being rebuilt."""


@dataclass
class FolderScan:
    """What is on disk: classes, and per split the image files with their labels (class by class)."""

    root: Path
    layout: str  # "splits" (train/ + test/ or val/) or "stratified" (split here)
    classes: list[str]
    files: dict[str, list[tuple[Path, int]]]
    ignored: list[str] = field(default_factory=list)
    key: str = ""


def _list_images(folder: Path, ignored: list[str], root: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted, hidden ones skipped); other files are appended to ``ignored``.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if f.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(str(p.relative_to(root)))
                continue
            out.append(p)
    return out


def _classes_of(split_dir: Path, root: Path, ignored: list[str]) -> tuple[list[str], dict[str, list[Path]]]:
    """Class names (sorted sub-folder names) of one split folder and each class's image files; no class folder is a
    DataError."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    stray = [p for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not classes:
        where = f" ({len(stray)} images lie directly in it)" if stray else ""
        raise DataError(f"The image folder {split_dir} has no class sub-folders{where}: put the images in one "
                        f"sub-folder per class ({split_dir}/<class name>/<image>), at least two classes.")
    ignored.extend(str(p.relative_to(root)) for p in split_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    files = {c: _list_images(split_dir / c, ignored, root) for c in classes}
    empty = [c for c in classes if not files[c]]
    if empty:
        raise DataError(f"The image folder {split_dir} has class folders without images: {', '.join(empty[:5])}"
                        f"{' ...' if len(empty) > 5 else ''}. Put images in them or remove them "
                        f"(image extensions: {', '.join(IMAGE_EXTENSIONS[:6])}, ...).")
    if len(classes) < 2:
        raise DataError(f"The image folder {split_dir} has one class ({classes[0]!r}): classification needs at least "
                        f"two class sub-folders ({split_dir}/<class name>/<image>).")
    return classes, files


def _pick(paths: list[Path], k: int | None, seed: int, label: int, split: str) -> list[Path]:
    """At most ``k`` of ``paths``, drawn with a generator seeded by (seed, label, split) and kept in order."""
    if k is None or len(paths) <= k:
        return paths
    keep = np.random.default_rng([seed, label, sum(map(ord, split))]).choice(len(paths), k, replace=False)
    return [paths[i] for i in sorted(keep)]


def scan_folder(path: str | os.PathLike, split_seed: int = 0, test_fraction: float = 0.2,
                max_per_class: int | None = None) -> FolderScan:
    """List an image folder's classes and files (no decoding); see the module docstring for the layout."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"No image folder at {root}: imagefolder:<path> needs a folder holding one sub-folder per "
                        "class (or train/ and test/ folders of them).")
    root = root.resolve()
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must lie in (0, 1); got {test_fraction}.")
    if max_per_class is not None and max_per_class < 1:
        raise ConfigError(f"max_per_class must be >= 1; got {max_per_class}.")
    subdirs = {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    ignored: list[str] = []
    files: dict[str, list[tuple[Path, int]]] = {}
    if "train" in subdirs and ({"test", "val"} & subdirs):
        layout = "splits"
        classes, per = _classes_of(root / "train", root, ignored)
        names = {"train": "train", "test": "test" if "test" in subdirs else "val"}
        if "test" in subdirs and "val" in subdirs:
            names["val"] = "val"
        for split, folder in names.items():
            if split != "train":
                cls_s, per_s = _classes_of(root / folder, root, ignored)
                if cls_s != classes:
                    raise DataError(f"{root / folder} has classes {cls_s[:6]} but {root / 'train'} has {classes[:6]}: "
                                    "every split needs the same class sub-folders.")
            else:
                per_s = per
            files[split] = [(p, i) for i, c in enumerate(classes)
                            for p in _pick(per_s[c], max_per_class, split_seed, i, split)]
    else:
        layout = "stratified"
        base = root / "train" if subdirs == {"train"} else root
        classes, per = _classes_of(base, root, ignored)
        files = {"train": [], "test": []}
        for i, c in enumerate(classes):
            paths = per[c]
            perm = np.random.default_rng([split_seed, i]).permutation(len(paths))
            n_test = min(max(int(round(len(paths) * test_fraction)), 1), len(paths) - 1) if len(paths) > 1 else 0
            test = sorted(perm[:n_test].tolist())
            train = sorted(perm[n_test:].tolist())
            files["train"] += [(p, i) for p in _pick([paths[j] for j in train], max_per_class, split_seed, i, "train")]
            files["test"] += [(p, i) for p in _pick([paths[j] for j in test], max_per_class, split_seed, i, "test")]
        if not files["test"]:
            raise DataError(f"The image folder {root} has one image per class: nothing is left for a test split. "
                            "Add images, or give train/ and test/ folders.")
    return FolderScan(root, layout, classes, files, ignored)


def cache_key(scan: FolderScan, image_size: tuple[int, int] | None, options: dict[str, Any]) -> str:
    """SHA-256 over the cache version, the folder path, every file's relative path, label, size and mtime, the
    image size and the split options: any change to the folder gives a new key."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "root": str(scan.root), "layout": scan.layout,
                         "classes": scan.classes, "image_size": image_size, "options": options},
                        sort_keys=True).encode())
    for split in sorted(scan.files):
        h.update(split.encode())
        for p, label in scan.files[split]:
            st = p.stat()
            h.update(f"\n{p.relative_to(scan.root)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------- decoding
class _Colour(Exception):
    """A colour image in a store sized for grey images: decode again with three channels."""


def _fit_size(im, size: tuple[int, int]):
    """Resize the shorter side to the target, then centre-crop to exactly ``size`` (H, W)."""
    from PIL import Image

    h, w = size
    scale = max(h / im.height, w / im.width)
    nw, nh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    if (nw, nh) != im.size:
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - w) // 2, (nh - h) // 2
    return im.crop((left, top, left + w, top + h)) if (nw, nh) != (w, h) else im


def _decode(path: Path, channels: int, size: tuple[int, int], resize: bool, first: Path) -> np.ndarray:
    """Decode one image to uint8 ``(C, H, W)`` with ``channels`` channels, resized and centre-cropped to ``size`` when
    ``resize``; undecodable or >8-bit files are DataErrors naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in ("I", "F") or im.mode.startswith("I;"):
                raise DataError(f"{path} is a {im.mode} image (more than 8 bits per channel); distill-apps stores "
                                "8-bit pixels. Convert the folder to 8-bit PNG/JPEG first.")
            grey = im.mode in GREY_MODES
            if channels == 1 and not grey:
                raise _Colour()
            im = im.convert("L" if channels == 1 else "RGB")
            if resize:
                im = _fit_size(im, size)
            elif (im.height, im.width) != size:
                raise DataError(
                    f"Images of different sizes: {path} is {im.width}x{im.height} but {first} is {size[1]}x{size[0]}. "
                    "Pass --image-size N (from_folder(..., image_size=N)) to resize them all (shorter side to N, then "
                    "a centre crop), or make them one size.")
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"Cannot read {path} as an image ({exc.__class__.__name__}: {exc}). distill-apps refuses "
                        "unreadable files rather than skipping them, so that every class keeps exactly the images "
                        "on disk: delete or move the file, or fix it.") from exc
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _first_image(path: Path) -> tuple[int, tuple[int, int]]:
    """Channels (1 for grey modes, else 3) and ``(height, width)`` of the first image, which set the folder's format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return (1 if im.mode in GREY_MODES else 3), (im.height, im.width)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"Cannot read {path} as an image ({exc.__class__.__name__}: {exc}). distill-apps refuses "
                        "unreadable files rather than skipping them: delete or move the file, or fix it.") from exc


def _fill(scan: FolderScan, arrays: dict[str, np.ndarray], channels: int, size: tuple[int, int], resize: bool,
          progress: bool, workers: int) -> None:
    """Decode every file of ``scan`` into the preallocated ``arrays`` (``<split>/x``, ``<split>/y``), in chunks over
    ``workers`` threads, with a progress bar."""
    first = scan.files["train"][0][0]
    total = sum(len(v) for v in scan.files.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"decoding {scan.root.name} (once; cached)", unit="img", leave=False)

    def work(job: tuple[str, int, int]) -> int:
        """Decode one ``(split, start, stop)`` chunk into the arrays; returns the number of images done."""
        split, a, b = job
        x, y = arrays[f"{split}/x"], arrays[f"{split}/y"]
        for i in range(a, b):
            p, label = scan.files[split][i]
            x[i] = _decode(p, channels, size, resize, first)
            y[i] = label
        return b - a

    jobs = [(s, a, min(a + 256, len(v))) for s, v in scan.files.items() for a in range(0, len(v), 256)]
    ex = ThreadPoolExecutor(max(1, workers))  # Pillow decodes without the GIL
    try:
        for n in ex.map(work, jobs):
            if bar is not None:
                bar.update(n)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)  # on an unreadable file, stop instead of decoding the rest
        if bar is not None:
            bar.close()


def _shapes(scan: FolderScan, channels: int, size: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and dtype of every array the cache holds, per split."""
    shapes = {f"{s}/x": ((len(v), channels, *size), "uint8") for s, v in scan.files.items()}
    shapes.update({f"{s}/y": ((len(v),), "int64") for s, v in scan.files.items()})
    return shapes


# ---------------------------------------------------------------------- the loader
def _image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)`` (an int means a square), or None; anything else is a ConfigError."""
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image_size must be a positive int or (height, width); got {image_size!r}.")
    return size  # type: ignore[return-value]


def resolve_folder(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """``path`` as given, or (when relative and absent) under the data root, so ``imagefolder:cifar10-jpg`` finds
    ``$DISTILL_APPS_DATA/cifar10-jpg``."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (data_root(root) / p).is_dir():
        return data_root(root) / p
    return p


def from_folder(path: str | os.PathLike, image_size: int | tuple[int, int] | None = None, *, split_seed: int = 0,
                test_fraction: float = 0.2, max_per_class: int | None = None, flip: bool | None = None,
                zca: bool | float = False, cache: bool = True, cache_dir: str | os.PathLike | None = None,
                progress: bool = True, workers: int | None = None, data_root: str | os.PathLike | None = None
                ) -> RealData:
    """Load an image folder as :class:`RealData` (uint8, memory-mapped from its cache).

    ``image_size`` (int or (H, W)) resizes every image (shorter side, then a centre crop); without it all images
    must share one size. A folder without train/ and test/ (or val/) is split here: ``test_fraction`` of every
    class, chosen with ``split_seed`` (both recorded in ``source``). ``max_per_class`` keeps a seeded subset of at
    most that many images per class and split (for quick runs). ``flip`` overrides DSA's flip (default: on for colour
    images, natural photos; off for grey ones, digits and scans); ``zca`` whitens (see :func:`~distill_apps.data.transforms.fit_zca`).
    ``cache=False`` decodes into memory without writing a cache.
    """
    size = _image_size(image_size)
    scan = scan_folder(resolve_folder(path, data_root), split_seed, test_fraction, max_per_class)
    options = {"max_per_class": max_per_class}
    if scan.layout == "stratified":
        options.update(split_seed=split_seed, test_fraction=test_fraction)
    scan.key = cache_key(scan, size, options)
    source = {"kind": "imagefolder", "path": str(scan.root), "cache_key": scan.key, "image_size": list(size) if size
              else None, "layout": scan.layout, **options}
    workers = workers or min(8, os.cpu_count() or 1)
    arrays, header = None, None
    folder = Path(cache_dir).expanduser() if cache_dir else cache_root() / "imagefolder"
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in scan.root.name)[:40] or "folder"
    variant = json.dumps({"root": str(scan.root), "image_size": size, **options}, sort_keys=True)
    prefix = f"{slug}-{hashlib.sha256(variant.encode()).hexdigest()[:10]}-"  # this folder, these options
    target = folder / f"{prefix}{scan.key[:20]}.safetensors"
    if cache and target.exists():
        try:
            arrays, header = safe_io.read_arrays(target, KIND, CACHE_VERSION, mmap=True)
            if header.get("key") != scan.key:
                raise SummaryFormatError(f"{target} was written for another state of the folder (its key differs)")
        except SummaryFormatError as exc:
            warnings.warn(f"The image cache {target} cannot be trusted ({exc}); decoding {scan.root} again.",
                          CacheWarning, stacklevel=2)
            arrays, header = None, None
    if arrays is None:
        arrays, header = _build(scan, size, target if cache else None, progress, workers)
        if cache:
            for old in folder.glob(f"{prefix}*.safetensors"):
                if old != target:
                    old.unlink(missing_ok=True)  # an earlier state of the same folder, same options
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    real = RealData(
        name=scan.root.name, x_train=t["train/x"], y_train=t["train/y"].clone(), x_test=t["test/x"],
        y_test=t["test/y"].clone(), num_classes=len(header["classes"]), mean=tuple(header["mean"]),
        std=tuple(header["std"]), class_names=header["classes"],
        flip_invariant=header["image_shape"][0] == 3 if flip is None else bool(flip),
        x_val=t.get("val/x"), y_val=t["val/y"].clone() if "val/y" in t else None,
        source={**source, "ignored_files": header.get("ignored", 0)}, memory_mapped=cache,
    )
    if zca:
        from .transforms import fit_zca

        real = real.with_transform(fit_zca(real, reg=0.1 if zca is True else float(zca), progress=progress))
    return real


def _build(scan: FolderScan, size: tuple[int, int] | None, target: Path | None, progress: bool, workers: int
           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode the folder into arrays (written to the cache file ``target`` when given) and the cache header (classes,
    layout, counts, per-channel mean/std)."""
    channels, first_size = _first_image(scan.files["train"][0][0])
    resize, size = size is not None, size or first_size
    header: dict[str, Any] = {"key": scan.key, "root": str(scan.root), "classes": scan.classes,
                              "layout": scan.layout, "image_shape": [channels, *size],
                              "counts": {s: len(v) for s, v in scan.files.items()},
                              "ignored": len(scan.ignored), "ignored_examples": scan.ignored[:5],
                              "mean": [0.0] * channels, "std": [1.0] * channels}
    for attempt in (channels, 3):
        header["image_shape"] = [attempt, *size]
        header["mean"], header["std"] = [0.0] * attempt, [1.0] * attempt
        shapes = _shapes(scan, attempt, size)
        writer = None if target is None else safe_io.ArrayFileWriter(target, shapes, KIND, CACHE_VERSION)
        try:
            if writer is None:
                arrays = {k: np.zeros(shape, dtype=dt) for k, (shape, dt) in shapes.items()}
            else:
                writer.reserve(header)
                arrays = {k: writer.array(k) for k in shapes}
            _fill(scan, arrays, attempt, size, resize, progress, workers)
        except _Colour:
            if writer is not None:
                writer.abort()
            continue  # the first image was grey, a later one is in colour: three channels for all
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        mean, std = channel_stats(torch.from_numpy(np.asarray(arrays["train/x"])))
        header["mean"], header["std"] = list(mean), list(std)
        if writer is None:
            return arrays, header
        writer.commit(header)
        return safe_io.read_arrays(target, KIND, CACHE_VERSION, mmap=True, verify=False)
    raise AssertionError("unreachable")
