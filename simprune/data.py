"""Calibration and evaluation datasets from local files; nothing is downloaded.

Accepted layouts:

- an ImageFolder directory: one sub-folder per class, sorted folder names = label order;
- the same layout packed in a zip (optionally under one top-level folder), checked with
  :func:`simprune.archive.check_zip` and decoded lazily, entry by entry;
- an ``.npz`` with ``x`` (uint8 NHWC/NHW images, or float NCHW already-normalised features such as
  log-mel spectrograms) and ``y`` (integer labels), optionally ``class_names`` (strings); loaded with
  ``allow_pickle=False``.

Images become float tensors in [0, 1], optionally resized (shorter side, then center crop), optionally
augmented (CIFAR-style random crop with padding 4 and horizontal flip), then normalised with mean/std.

Example::

    ds = open_dataset("test.zip", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), limit=1000)
    loader = make_loader(ds, batch_size=128)
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from simprune.archive import (
    DATASET_LIMITS,
    DATASET_MAX_ENTRY_BYTES,
    NPZ_LIMITS,
    check_zip,
    normalize_entry_name,
    read_entry,
)
from simprune.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
MAX_IMAGE_PIXELS = 40_000_000
"""Images with more pixels are refused before decoding (decompression bombs)."""
CENTER_CROP_RATIO = 0.875
"""Resizing takes the shorter side to ``size / ratio``, then crops the center ``size`` (256 -> 224)."""
AUGMENT_PADDING = 4

FORMAT_IMAGEFOLDER = "imagefolder"
FORMAT_IMAGEFOLDER_ZIP = "imagefolder-zip"
FORMAT_NPZ = "npz"

_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


# ----------------------------------------------------------------------------------------------- transform


class ImageTransform:
    """uint8 HWC image -> normalised float CHW tensor (resize/crop, optional augmentation). Picklable."""

    def __init__(
        self,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        size: tuple[int, int] | None = None,
        train_augment: bool = False,
        crop_ratio: float = CENTER_CROP_RATIO,
    ) -> None:
        if (mean is None) != (std is None):
            raise InputError("give both mean and std, or neither")
        if mean is not None and std is not None:
            if len(mean) != len(std) or not mean:
                raise InputError(
                    f"mean {tuple(mean)} and std {tuple(std)} must have the same, non-zero length"
                )
            if any(s <= 0 for s in std):
                raise InputError(f"std values must be positive, got {tuple(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) if std is not None else None
        self.size = size
        self.train_augment = train_augment
        if not 0 < crop_ratio <= 1:
            raise InputError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        self.crop_ratio = crop_ratio

    @property
    def channels(self) -> int | None:
        return None if self.mean is None else int(self.mean.shape[0])

    def __call__(self, hwc: np.ndarray) -> torch.Tensor:
        if not (hwc.flags.writeable and hwc.flags.c_contiguous):
            hwc = np.array(hwc, dtype=np.uint8, order="C")
        x = torch.from_numpy(hwc).permute(2, 0, 1).to(torch.float32).div_(255.0)
        x = self._resize(x)
        if self.train_augment:
            x = self._augment(x)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            return x
        th, tw = self.size
        h, w = x.shape[-2:]
        if (h, w) == (th, tw):
            return x
        short = max(1, round(max(th, tw) / self.crop_ratio))
        if h <= w:
            nh, nw = short, max(1, round(w * short / h))
        else:
            nh, nw = max(1, round(h * short / w)), short
        nh, nw = max(nh, th), max(nw, tw)
        x = F.interpolate(x.unsqueeze(0), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        x = x.squeeze(0).clamp_(0.0, 1.0)
        top, left = (nh - th) // 2, (nw - tw) // 2
        return x[:, top : top + th, left : left + tw]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = AUGMENT_PADDING
        padded = F.pad(x, (p, p, p, p), value=0.0)
        top = int(torch.randint(0, 2 * p + 1, (1,)))
        left = int(torch.randint(0, 2 * p + 1, (1,)))
        x = padded[:, top : top + h, left : left + w]
        if bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x.contiguous()


def _decode_image(data: bytes, name: str, channels: int) -> np.ndarray:
    """Decode image bytes to a uint8 HWC array with ``channels`` channels; InputError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise InputError(f"image {name!r} is {w}x{h} pixels; the limit is {MAX_IMAGE_PIXELS} pixels")
            img = img.convert(_PIL_MODES[channels])
            arr = np.array(img, dtype=np.uint8)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode image {name!r}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


# ------------------------------------------------------------------------------------------- indexing


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def _index_imagefolder(
    items: Iterable[tuple[str, str, bool]], where: str
) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and ``(key, label)`` samples from ``(relative path, key, is_dir)`` items.

    Class folders are the first path component, after stripping one top-level folder that holds
    everything. Hidden files and ``__MACOSX`` are ignored; every class folder must hold an image.
    """
    files: list[tuple[str, str]] = []
    dirs: set[str] = set()
    for rel, key, is_dir in items:
        rel = normalize_entry_name(rel)
        if not rel or _is_hidden(rel):
            continue
        if is_dir:
            dirs.add(rel)
        elif rel.lower().endswith(IMAGE_EXTENSIONS):
            files.append((rel, key))
    if not files:
        raise InputError(
            f"{where}: no images found; expected one folder per class holding image files "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        )
    tops = {rel.split("/", 1)[0] for rel, _ in files}
    prefix = ""
    if len(tops) == 1 and all(rel.count("/") >= 2 for rel, _ in files):
        prefix = next(iter(tops)) + "/"
    stripped: list[tuple[str, str]] = []
    for rel, key in files:
        rel = rel[len(prefix) :]
        if "/" not in rel:
            raise InputError(f"{where}: image {prefix + rel!r} is not inside a class folder")
        stripped.append((rel, key))
    classes = {rel.split("/", 1)[0] for rel, _ in stripped}
    for d in dirs:
        if prefix and not d.startswith(prefix):
            continue
        sub = d[len(prefix) :]
        if sub:
            classes.add(sub.split("/", 1)[0])
    class_names = sorted(classes)
    label_of = {c: i for i, c in enumerate(class_names)}
    counts = dict.fromkeys(class_names, 0)
    samples = []
    for rel, key in sorted(stripped):
        cls = rel.split("/", 1)[0]
        counts[cls] += 1
        samples.append((key, label_of[cls]))
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise InputError(f"{where}: class folder(s) without images: {', '.join(empty[:10])}")
    return class_names, samples


def _dir_items(root: Path) -> list[tuple[str, str, bool]]:
    items: list[tuple[str, str, bool]] = []
    visited = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Follow symlinked folders (like torchvision's ImageFolder) but never into a cycle.
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in visited:
                visited.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            items.append((rel, rel, True))
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            items.append((rel, rel, False))
    return items


def _read_file(root: Path, key: str) -> bytes:
    path = root / key
    try:
        size = path.stat().st_size
        if size > DATASET_MAX_ENTRY_BYTES:
            raise InputError(f"image {key!r} is {size} bytes; the limit is {DATASET_MAX_ENTRY_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {key!r}: {exc}") from None


def _zip_items(infos: list[zipfile.ZipInfo]) -> list[tuple[str, str, bool]]:
    return [(i.filename, i.filename, i.is_dir()) for i in infos]


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in _ZIP_MAGIC


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return FORMAT_IMAGEFOLDER
    if not path.is_file():
        raise InputError(f"dataset not found: {path}")
    if not _is_zip(path):
        raise InputError(f"{path.name}: expected an ImageFolder directory, a .zip of one, or an .npz file")
    if path.suffix.lower() == ".npz":
        return FORMAT_NPZ
    return FORMAT_IMAGEFOLDER_ZIP


def _balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` samples, spread evenly over classes and ordered so that every prefix is too
    (one sample of each class in turn, classes in a random order each round); deterministic in ``seed``.

    The order matters: the pruning phases read the first few hundred calibration images (the sensitivity scan,
    feature budgets), and an ImageFolder lists its samples class by class."""
    n = len(labels)
    rng = np.random.default_rng(seed)
    rank = np.empty(n, dtype=np.int64)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rank[rng.permutation(idx)] = np.arange(len(idx))
    tiebreak = rng.random(n)
    order = np.lexsort((tiebreak, rank))
    return order[:limit]


def _parse_size(input_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        dims = tuple(int(d) for d in input_size)
        if len(dims) not in (2, 3):
            raise InputError(f"input_size must be N, (H, W) or (C, H, W), got {tuple(input_size)}")
        size = (dims[-2], dims[-1])
    if min(size) <= 0:
        raise InputError(f"input_size must be positive, got {input_size}")
    return size


# ------------------------------------------------------------------------------------------- datasets


class _ImageFolderBase(Dataset):
    format = ""

    def __init__(self, class_names: list[str], samples: list[tuple[str, int]], transform: ImageTransform):
        self.classes = class_names
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform
        self.channels = transform.channels or 3
        if self.channels not in _PIL_MODES:
            raise InputError(
                f"images can be decoded with 1, 3 or 4 channels; mean/std have {self.channels} values"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, key: str) -> bytes:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        key, label = self.samples[index]
        arr = _decode_image(self._read(key), key, self.channels)
        return self.transform(arr), label


class ImageFolderDataset(_ImageFolderBase):
    """ImageFolder directory: ``root/<class>/<...>/<image>``."""

    format = FORMAT_IMAGEFOLDER

    def __init__(
        self, root: Path, class_names: list[str], samples: list[tuple[str, int]], transform: ImageTransform
    ) -> None:
        super().__init__(class_names, samples, transform)
        self.root = root

    def _read(self, key: str) -> bytes:
        return _read_file(self.root, key)


class ZipImageFolderDataset(_ImageFolderBase):
    """ImageFolder layout inside a zip. The archive is opened lazily once per process (fork/pickle safe)."""

    format = FORMAT_IMAGEFOLDER_ZIP

    def __init__(
        self, path: Path, class_names: list[str], samples: list[tuple[str, int]], transform: ImageTransform
    ) -> None:
        super().__init__(class_names, samples, transform)
        self.path = path
        self._zf: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_zf"] = None
        state["_pid"] = None
        return state

    def _zip(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            try:
                self._zf = zipfile.ZipFile(self.path)
            except (OSError, zipfile.BadZipFile) as exc:
                raise InputError(f"cannot open {self.path.name}: {exc}") from None
            self._pid = os.getpid()
        return self._zf

    def _read(self, key: str) -> bytes:
        return read_entry(self._zip(), key, max_bytes=DATASET_MAX_ENTRY_BYTES)

    def close(self) -> None:
        """Close this process's handle on the archive (it reopens on the next access)."""
        if self._zf is not None and self._pid == os.getpid():
            self._zf.close()
        self._zf = None


class NpzDataset(Dataset):
    """Arrays held in memory: uint8 images (transformed like files) or float features (returned as is)."""

    format = FORMAT_NPZ

    def __init__(
        self, x: np.ndarray, y: np.ndarray, class_names: list[str], transform: ImageTransform
    ) -> None:
        self.x = x
        self.y = y
        self.classes = class_names
        self.targets = [int(v) for v in y]
        self.transform = transform
        self.is_image = x.dtype == np.uint8

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = int(self.y[index])
        if self.is_image:
            return self.transform(self.x[index]), label
        return torch.from_numpy(np.array(self.x[index], dtype=np.float32)), label


# ----------------------------------------------------------------------------------------------- npz


def _npz_header(zf: zipfile.ZipFile, member: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``member`` (an .npy inside an .npz) from its header only."""
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        raise InputError(f"{where}: cannot read the header of {member!r}: {exc}") from None
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _npz_members(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        infos = check_zip(f, **NPZ_LIMITS)
    members = {normalize_entry_name(i.filename).removesuffix(".npy"): i.filename for i in infos}
    for required in ("x", "y"):
        if required not in members:
            raise InputError(
                f"{path.name}: the .npz must contain arrays 'x' and 'y'; found {sorted(members)}"
            )
    return members


def _check_npz_shapes(
    x_shape: tuple[int, ...], x_dtype: np.dtype, y_shape: tuple[int, ...], y_dtype: np.dtype, where: str
) -> None:
    if len(y_shape) != 1:
        raise InputError(f"{where}: 'y' must be a 1-D array of integer labels, got shape {y_shape}")
    if y_dtype.kind not in "iu":
        raise InputError(f"{where}: 'y' must hold integer labels, got dtype {y_dtype}")
    if x_dtype == np.uint8:
        if len(x_shape) not in (3, 4):
            raise InputError(f"{where}: uint8 'x' must be images NHWC or NHW, got shape {x_shape}")
    elif x_dtype.kind == "f":
        if len(x_shape) < 2:
            raise InputError(f"{where}: float 'x' must be N x C x ..., got shape {x_shape}")
    else:
        raise InputError(f"{where}: 'x' must be uint8 images or float features, got dtype {x_dtype}")
    if x_shape[0] != y_shape[0]:
        raise InputError(f"{where}: 'x' has {x_shape[0]} samples but 'y' has {y_shape[0]} labels")
    if y_shape[0] == 0:
        raise InputError(f"{where}: the dataset is empty")


def _npz_class_names(npz: Any, members: dict[str, str], y: np.ndarray, where: str) -> list[str]:
    num = int(y.max()) + 1 if len(y) else 0
    if "class_names" in members:
        names = npz["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(f"{where}: 'class_names' must be a 1-D array of strings")
        out = [str(n) for n in names.tolist()]
        if len(out) < num:
            raise InputError(f"{where}: labels go up to {num - 1} but 'class_names' has {len(out)} names")
        return out
    return [str(i) for i in range(num)]


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    where = path.name
    members = _npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz["x"]
            y = npz["y"]
            _check_npz_shapes(x.shape, x.dtype, y.shape, y.dtype, where)
            if y.min() < 0:
                raise InputError(f"{where}: labels must be non-negative, found {int(y.min())}")
            class_names = _npz_class_names(npz, members, y, where)
    except InputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(
            f"{where}: cannot load the .npz (only plain numeric arrays are accepted): {exc}"
        ) from None
    return x, y.astype(np.int64), class_names


# ------------------------------------------------------------------------------------------- public API


def open_dataset(
    path: str | Path,
    *,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    input_size: int | Sequence[int] | None = None,
    train_augment: bool = False,
    limit: int | None = None,
    seed: int = 0,
    crop_ratio: float = CENTER_CROP_RATIO,
) -> Dataset:
    """Open an ImageFolder directory, an ImageFolder zip or an ``.npz`` as a dataset of ``(tensor, label)``.

    Images are decoded with ``len(mean)`` channels (1: grayscale, 3: RGB, 4: RGBA), scaled to [0, 1],
    resized if ``input_size`` (N, (H, W) or (C, H, W)) differs (shorter side to ``size / crop_ratio``,
    then center crop), augmented if ``train_augment`` (random crop, padding 4, horizontal flip) and
    normalised. Float ``.npz`` features are returned unchanged. ``limit`` keeps a seeded, class-balanced
    subset of at most ``limit`` samples. The dataset has ``classes``, ``targets`` and ``format``.
    """
    p = Path(path)
    fmt = _detect_format(p)
    size = _parse_size(input_size)
    transform = ImageTransform(mean, std, size=size, train_augment=train_augment, crop_ratio=crop_ratio)
    if limit is not None and limit <= 0:
        raise InputError(f"limit must be positive, got {limit}")

    if fmt == FORMAT_NPZ:
        x, y, class_names = _load_npz(p)
        if x.dtype == np.uint8:
            if x.ndim == 3:
                x = x[..., None]
            channels = x.shape[-1]
        else:
            channels = x.shape[1]
            if size is not None and tuple(x.shape[-2:]) != size:
                raise InputError(
                    f"{p.name}: features are {tuple(x.shape[-2:])} but the model expects {size}; "
                    "float features are not resized"
                )
        if transform.channels is not None and transform.channels != channels:
            raise InputError(
                f"{p.name}: samples have {channels} channels but mean/std have {transform.channels} values"
            )
        if limit is not None:
            idx = _balanced_subset(y, limit, seed)
            x, y = x[idx], y[idx]
        if x.dtype != np.uint8:
            x = x.astype(np.float32, copy=False)
        return NpzDataset(x, y, class_names, transform)

    if fmt == FORMAT_IMAGEFOLDER:
        class_names, samples = _index_imagefolder(_dir_items(p), p.name)
        ds_cls: type[ImageFolderDataset] | type[ZipImageFolderDataset] = ImageFolderDataset
    else:
        with open(p, "rb") as f:
            infos = check_zip(f, **DATASET_LIMITS)
        class_names, samples = _index_imagefolder(_zip_items(infos), p.name)
        ds_cls = ZipImageFolderDataset
    if limit is not None:
        idx = _balanced_subset(np.array([label for _, label in samples]), limit, seed)
        samples = [samples[i] for i in idx]
    return ds_cls(p, class_names, samples, transform)


def inspect_dataset(path: str | Path) -> dict[str, Any]:
    """``{'samples', 'classes', 'class_names', 'format'}`` without decoding the images (one is sniffed).

    Raises :class:`InputError` (or :class:`UnsafeInputError` for unsafe archives) when the dataset
    cannot be used.
    """
    p = Path(path)
    fmt = _detect_format(p)
    if fmt == FORMAT_NPZ:
        members = _npz_members(p)
        with zipfile.ZipFile(p) as zf:
            x_shape, x_dtype = _npz_header(zf, members["x"], p.name)
            y_shape, y_dtype = _npz_header(zf, members["y"], p.name)
        _check_npz_shapes(x_shape, x_dtype, y_shape, y_dtype, p.name)
        try:
            with np.load(p, allow_pickle=False) as npz:
                y = npz["y"]
                if y.min() < 0:
                    raise InputError(f"{p.name}: labels must be non-negative, found {int(y.min())}")
                class_names = _npz_class_names(npz, members, y, p.name)
        except InputError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"{p.name}: cannot load the .npz: {exc}") from None
        return {
            "samples": int(y_shape[0]),
            "classes": len(class_names),
            "class_names": class_names,
            "format": fmt,
        }

    if fmt == FORMAT_IMAGEFOLDER:
        class_names, samples = _index_imagefolder(_dir_items(p), p.name)
        first = _read_file(p, samples[0][0])
    else:
        with open(p, "rb") as f:
            infos = check_zip(f, **DATASET_LIMITS)
            class_names, samples = _index_imagefolder(_zip_items(infos), p.name)
            with zipfile.ZipFile(f) as zf:
                first = read_entry(zf, samples[0][0], max_bytes=DATASET_MAX_ENTRY_BYTES)
    _sniff_image(first, samples[0][0])
    return {"samples": len(samples), "classes": len(class_names), "class_names": class_names, "format": fmt}


def _sniff_image(data: bytes, name: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {name!r}: {exc}") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(f"image {name!r} is {w}x{h} pixels; the limit is {MAX_IMAGE_PIXELS} pixels")


def make_loader(
    ds: Dataset,
    batch_size: int,
    shuffle: bool = False,
    num_workers: int = 0,
    *,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``ds``; shuffling is seeded, memory is pinned when CUDA is available."""
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )
