"""Datasets (ImageFolder dir/zip, npz), subsets, normalisation, evaluation and device selection."""

from __future__ import annotations

import pickle
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from simprune.data import inspect_dataset, make_loader, open_dataset
from simprune.device import select_device
from simprune.errors import InputError, JobCancelled, UnsafeInputError
from simprune.evaluate import evaluate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Created in this (unsorted) order; the label order must be the sorted names.
COLORS = {"b_dog": (0, 255, 0), "a_cat": (255, 0, 128), "c_eel": (0, 0, 255)}
PER_CLASS = 4
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.5, 1.0)


def _expected(color: tuple[int, ...]) -> torch.Tensor:
    x = torch.tensor(color, dtype=torch.float32) / 255.0
    return (x - torch.tensor(MEAN)) / torch.tensor(STD)


def _write_tree(root: Path) -> Path:
    for cls, color in COLORS.items():
        (root / cls).mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.new("RGB", (8, 8), color).save(root / cls / f"{i:03d}.png")
    (root / "README.txt").write_text("not an image")
    return root


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    return _write_tree(tmp_path / "folder")


def _zip_dir(src: Path, dest: Path, prefix: str = "", junk: bool = False) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src).as_posix()
            if path.is_dir():
                zf.writestr(prefix + rel + "/", b"")
            else:
                zf.write(path, prefix + rel)
        if junk:
            zf.writestr("__MACOSX/" + prefix + "a_cat/._000.png", b"resource fork")
            zf.writestr(prefix + ".DS_Store", b"junk")
    return dest


# ------------------------------------------------------------------------------------------ ImageFolder


def test_image_folder_directory_labels_and_normalisation(image_dir: Path) -> None:
    ds = open_dataset(image_dir, mean=MEAN, std=STD)
    assert ds.classes == ["a_cat", "b_dog", "c_eel"]
    assert len(ds) == 3 * PER_CLASS
    assert Counter(ds.targets) == {0: PER_CLASS, 1: PER_CLASS, 2: PER_CLASS}
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
        want = _expected(COLORS[ds.classes[y]])
        assert torch.allclose(x, want.view(3, 1, 1).expand(3, 8, 8), atol=1e-6)


@pytest.mark.parametrize("prefix", ["", "mydata/"])
def test_image_folder_zip_matches_directory(image_dir: Path, tmp_path: Path, prefix: str) -> None:
    zpath = _zip_dir(image_dir, tmp_path / "data.zip", prefix=prefix, junk=True)
    ds_zip = open_dataset(zpath, mean=MEAN, std=STD)
    ds_dir = open_dataset(image_dir, mean=MEAN, std=STD)
    assert ds_zip.format == "imagefolder-zip" and ds_dir.format == "imagefolder"
    assert ds_zip.classes == ds_dir.classes
    assert ds_zip.targets == ds_dir.targets
    for i in range(len(ds_dir)):
        assert torch.equal(ds_zip[i][0], ds_dir[i][0])


def test_zip_dataset_is_picklable_and_works_in_workers(image_dir: Path, tmp_path: Path) -> None:
    zpath = _zip_dir(image_dir, tmp_path / "data.zip")
    ds = open_dataset(zpath, mean=MEAN, std=STD)
    first = ds[0][0]  # opens the archive in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0][0], first)
    batches = list(make_loader(ds, batch_size=5, num_workers=1))
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    assert torch.cat([b[1] for b in batches]).tolist() == ds.targets


def test_grayscale_jpeg_and_resize(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for cls, value in (("dark", 40), ("light", 220)):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 10), (value, value, value)).save(root / cls / f"{i}.jpg", quality=95)
    ds = open_dataset(root, mean=(0.5,), std=(0.5,))
    x, y = ds[0]
    assert x.shape == (1, 10, 12) and y == 0
    assert abs(float(x.mean()) - (40 / 255 - 0.5) / 0.5) < 0.03  # JPEG is lossy
    resized = open_dataset(root, mean=(0.5,), std=(0.5,), input_size=(1, 16, 16))
    assert resized[3][0].shape == (1, 16, 16)
    assert abs(float(resized[3][0].mean()) - (220 / 255 - 0.5) / 0.5) < 0.03
    rgb = open_dataset(root, mean=MEAN, std=STD, input_size=7)
    assert rgb[0][0].shape == (3, 7, 7)
    same = open_dataset(root, mean=(0.5,), std=(0.5,), input_size=(10, 12))
    assert torch.equal(same[1][0], ds[1][0])  # no resize when the size already matches


def test_train_augment_crops_and_flips(tmp_path: Path) -> None:
    root = tmp_path / "aug" / "only"
    root.mkdir(parents=True)
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:, :16] = 255  # left half white: a flip moves the white mass to the right half
    Image.fromarray(img).save(root / "0.png")
    plain = open_dataset(root.parent, mean=None, std=None)[0][0]
    aug = open_dataset(root.parent, mean=None, std=None, train_augment=True)
    torch.manual_seed(0)
    draws = [aug[0][0] for _ in range(40)]
    assert all(d.shape == plain.shape for d in draws)
    cols = torch.arange(32, dtype=torch.float32)

    def white_center(d: torch.Tensor) -> float:
        mass = d[0].sum(0)
        return float((mass * cols).sum() / mass.sum())

    centers = [white_center(d) for d in draws]
    assert white_center(plain) == pytest.approx(7.5)
    assert any(c < 16 for c in centers) and any(c > 16 for c in centers)  # flipped and not flipped
    assert all(c < 12 or c > 19 for c in centers)  # shifts are at most 4 pixels
    padded_rows = [bool((d[0].sum(1) == 0).any()) for d in draws]  # a zero row comes from padding
    assert any(padded_rows)


def test_limit_is_balanced_and_deterministic(image_dir: Path) -> None:
    ds = open_dataset(image_dir, mean=MEAN, std=STD, limit=6, seed=1)
    assert len(ds) == 6
    assert Counter(ds.targets) == {0: 2, 1: 2, 2: 2}
    again = open_dataset(image_dir, mean=MEAN, std=STD, limit=6, seed=1)
    assert again.samples == ds.samples
    seeds = {
        tuple(k for k, _ in open_dataset(image_dir, mean=MEAN, std=STD, limit=6, seed=s).samples)
        for s in range(5)
    }
    assert len(seeds) > 1
    assert len(open_dataset(image_dir, mean=MEAN, std=STD, limit=1000)) == 3 * PER_CLASS
    for limit in (6, 1000):  # every prefix is balanced too: the pruning phases read the first images
        targets = open_dataset(image_dir, mean=MEAN, std=STD, limit=limit, seed=2).targets
        for k in range(3, len(targets) + 1, 3):
            assert Counter(targets[:k]) == {c: k // 3 for c in range(3)}
    with pytest.raises(InputError, match="limit"):
        open_dataset(image_dir, mean=MEAN, std=STD, limit=0)


# ---------------------------------------------------------------------------------------------- npz


def test_npz_uint8_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 6, 5, 3), dtype=np.uint8)
    y = np.array([0, 1] * 5, dtype=np.int64)
    path = tmp_path / "imgs.npz"
    np.savez(path, x=x, y=y, class_names=np.array(["neg", "pos"]))
    ds = open_dataset(path, mean=MEAN, std=STD)
    assert ds.format == "npz" and ds.classes == ["neg", "pos"] and len(ds) == 10
    got, label = ds[3]
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    want = (torch.from_numpy(x[3]).permute(2, 0, 1).float() / 255 - mean) / std
    assert label == 1 and torch.allclose(got, want, atol=1e-6)
    sub = open_dataset(path, mean=MEAN, std=STD, limit=4)
    assert Counter(sub.targets) == {0: 2, 1: 2}
    with pytest.raises(InputError, match="3 channels but mean/std have 1"):
        open_dataset(path, mean=(0.5,), std=(0.5,))
    info = inspect_dataset(path)
    assert info == {"samples": 10, "classes": 2, "class_names": ["neg", "pos"], "format": "npz"}


def test_npz_grayscale_and_float_features(tmp_path: Path) -> None:
    gray = tmp_path / "gray.npz"
    np.savez_compressed(gray, x=np.full((4, 5, 5), 255, dtype=np.uint8), y=np.array([0, 1, 2, 2]))
    ds = open_dataset(gray, mean=(0.5,), std=(0.5,))
    assert ds[0][0].shape == (1, 5, 5) and torch.allclose(ds[0][0], torch.ones(1, 5, 5))
    assert inspect_dataset(gray)["classes"] == 3

    feats = np.random.default_rng(1).standard_normal((6, 1, 40, 20)).astype(np.float32)
    fpath = tmp_path / "mels.npz"
    np.savez(fpath, x=feats, y=np.arange(6) % 2)
    fds = open_dataset(fpath, mean=(0.0,), std=(1.0,), input_size=(1, 40, 20))
    assert torch.equal(fds[2][0], torch.from_numpy(feats[2]))  # already normalised: returned as is
    with pytest.raises(InputError, match="not resized"):
        open_dataset(fpath, mean=(0.0,), std=(1.0,), input_size=(1, 32, 32))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((3, 4, 4, 3), np.uint8)}, "'x' and 'y'"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": np.zeros(2, np.int64)}, "3 samples but 'y' has 2"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": np.zeros(3, np.float32)}, "integer labels"),
        ({"x": np.zeros((3, 4, 4, 3), np.int32), "y": np.zeros(3, np.int64)}, "uint8 images or float"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": np.array([0, -1, 0])}, "non-negative"),
        ({"x": np.array([{"a": 1}] * 3, dtype=object), "y": np.zeros(3, np.int64)}, "plain numeric|dtype"),
    ],
)
def test_bad_npz_is_input_error(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=match):
        open_dataset(path, mean=MEAN, std=STD)
    with pytest.raises(InputError):
        inspect_dataset(path)


# --------------------------------------------------------------------------------------- bad inputs


def test_bad_image_folders_are_input_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images"):
        open_dataset(empty, mean=MEAN, std=STD)

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "a.png")
    with pytest.raises(InputError, match="not inside a class folder"):
        inspect_dataset(flat)

    hollow = _write_tree(tmp_path / "hollow")
    (hollow / "d_empty").mkdir()
    with pytest.raises(InputError, match="without images: d_empty"):
        open_dataset(hollow, mean=MEAN, std=STD)

    broken = _write_tree(tmp_path / "broken")
    (broken / "a_cat" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    ds = open_dataset(broken, mean=MEAN, std=STD)
    with pytest.raises(InputError, match="cannot decode image 'a_cat/000.png'"):
        ds[0]

    with pytest.raises(InputError, match="not found"):
        open_dataset(tmp_path / "missing", mean=MEAN, std=STD)
    notzip = tmp_path / "data.bin"
    notzip.write_bytes(b"hello")
    with pytest.raises(InputError, match="expected an ImageFolder"):
        open_dataset(notzip, mean=MEAN, std=STD)
    with pytest.raises(InputError, match="same, non-zero length"):
        open_dataset(_write_tree(tmp_path / "ok"), mean=MEAN, std=(0.5,))
    with pytest.raises(InputError, match="1, 3 or 4 channels"):
        open_dataset(tmp_path / "ok", mean=(0.5, 0.5), std=(0.5, 0.5))


@pytest.mark.parametrize("name", ["../evil/0.png", "/abs/0.png", "a\\..\\0.png"])
def test_unsafe_dataset_zip_is_refused(image_dir: Path, tmp_path: Path, name: str) -> None:
    zpath = _zip_dir(image_dir, tmp_path / "evil.zip")
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr(name, (image_dir / "a_cat" / "000.png").read_bytes())
    with pytest.raises(UnsafeInputError):
        open_dataset(zpath, mean=MEAN, std=STD)
    with pytest.raises(UnsafeInputError):
        inspect_dataset(zpath)


def test_inspect_dataset_counts(image_dir: Path, tmp_path: Path) -> None:
    want = {"samples": 12, "classes": 3, "class_names": ["a_cat", "b_dog", "c_eel"]}
    assert inspect_dataset(image_dir) == {**want, "format": "imagefolder"}
    zpath = _zip_dir(image_dir, tmp_path / "d.zip", prefix="top/", junk=True)
    assert inspect_dataset(zpath) == {**want, "format": "imagefolder-zip"}
    junk = tmp_path / "junk"
    (junk / "cls").mkdir(parents=True)
    (junk / "cls" / "x.jpg").write_bytes(b"plain text renamed to .jpg")
    with pytest.raises(InputError, match="cannot read image"):
        inspect_dataset(junk)


def test_make_loader_shuffle_is_seeded() -> None:
    ds = TensorDataset(torch.arange(20).float().view(20, 1), torch.arange(20))
    order = [b[1].tolist() for b in make_loader(ds, 5, shuffle=True, seed=3)]
    assert order == [b[1].tolist() for b in make_loader(ds, 5, shuffle=True, seed=3)]
    assert sorted(sum(order, [])) == list(range(20)) and sum(order, []) != list(range(20))
    with pytest.raises(InputError):
        make_loader(ds, 0)


# ----------------------------------------------------------------------------------------- evaluate


class _AlwaysZero(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, device=x.device) + self.bias
        logits[:, 0] = 1.0
        return logits


def _half_zero_loader(n: int = 20, batch: int = 4) -> torch.utils.data.DataLoader:
    labels = torch.tensor([0, 1] * (n // 2))
    return make_loader(TensorDataset(torch.randn(n, 2), labels), batch)


def test_evaluate_known_accuracy_progress_and_mode() -> None:
    model = _AlwaysZero()
    model.train()
    calls: list[tuple[int, int | None]] = []
    out = evaluate(model, _half_zero_loader(), "cpu", progress=lambda d, t: calls.append((d, t)))
    assert out == {"top1": 0.5, "samples": 20}
    assert calls == [(i, 5) for i in range(1, 6)]
    assert model.training  # restored


def test_evaluate_on_real_dataset(image_dir: Path) -> None:
    ds = open_dataset(image_dir, mean=MEAN, std=STD)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with torch.no_grad():  # predict the class from the mean of the red/green/blue channel
        model[1].weight.zero_()
        model[1].bias.zero_()
        for cls, channel in ((0, 0), (1, 1), (2, 2)):
            model[1].weight[cls, channel * 64 : (channel + 1) * 64] = 1.0
    out = evaluate(model, make_loader(ds, 5), select_device("cpu"))
    assert out == {"top1": 1.0, "samples": 12}


def test_evaluate_cancel_and_bad_labels() -> None:
    seen = []

    def cancel() -> bool:
        seen.append(1)
        return len(seen) > 2

    with pytest.raises(JobCancelled):
        evaluate(_AlwaysZero(), _half_zero_loader(), "cpu", should_cancel=cancel)
    assert len(seen) == 3
    with pytest.raises(InputError, match="label 1 but the model predicts 1 classes"):
        evaluate(_AlwaysZero(num_classes=1), _half_zero_loader(), "cpu")
    with pytest.raises(InputError, match="empty"):
        evaluate(_AlwaysZero(), [], "cpu")


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        select_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            select_device("cuda")
        with pytest.raises(InputError, match="CUDA is not available"):
            select_device("cuda:1")
    else:
        assert select_device("cuda").type == "cuda"


# ------------------------------------------------------------------------------------ shared CIFAR-10


def test_shared_cifar10_test_zip() -> None:
    path = SHARED / "cifar10-jpeg" / "test.zip"
    if not path.is_file():
        pytest.skip(f"shared dataset not available at {path}")
    info = inspect_dataset(path)
    assert info["samples"] == 10_000 and info["classes"] == 10
    assert info["class_names"][0] == "airplane" and info["class_names"][-1] == "truck"
    ds = open_dataset(path, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), limit=100)
    assert len(ds) == 100 and Counter(ds.targets) == dict.fromkeys(range(10), 10)
    xs = [ds[i][0] for i in range(len(ds))]
    assert all(x.shape == (3, 32, 32) for x in xs)
    assert -2.2 < float(torch.stack(xs).mean()) < 2.7
