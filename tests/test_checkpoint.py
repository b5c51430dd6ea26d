"""Checkpoint loading from untrusted files: no code execution, zip checks, wrappers, safetensors."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from simprune.archive import check_zip, read_entry
from simprune.checkpoint import checkpoint_meta, load_state_dict, save_state_dict
from simprune.errors import InputError, UnsafeInputError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class _OpenPayload:
    """Unpickling this calls ``open(marker, 'w')``: creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (open, (self.marker, "w"))


class _SystemPayload:
    """Unpickling this runs ``touch marker`` through os.system."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def _small_sd() -> dict[str, torch.Tensor]:
    return {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "conv.bias": torch.randn(4),
        "fc.weight": torch.randn(2, 4),
    }


# --------------------------------------------------------------------------------------------- (a) pickles


@pytest.mark.parametrize("payload_cls", [_OpenPayload, _SystemPayload])
@pytest.mark.parametrize("container", ["torch-zip", "torch-legacy", "raw-pickle"])
def test_malicious_pickle_is_refused_without_running(
    tmp_path: Path, payload_cls: type, container: str
) -> None:
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"w": torch.zeros(2)}, "extra": payload_cls(str(marker))}
    path = tmp_path / "evil.pt"
    if container == "torch-zip":
        torch.save(payload, path)
    elif container == "torch-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload_cls(str(marker)), protocol=2))
    assert not marker.exists()

    with pytest.raises(UnsafeInputError, match="only weights are accepted"):
        load_state_dict(path)
    assert not marker.exists(), "the pickle payload ran during loading"


def test_pickled_module_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), path)  # a full pickled module, not a state_dict
    with pytest.raises(UnsafeInputError, match="pickled objects other than tensors"):
        load_state_dict(path)


# ------------------------------------------------------------------------------------------ (b) zip bombs


def _torch_zip_entries(tmp_path: Path) -> list[tuple[str, bytes]]:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.zeros(4)}, src)
    with zipfile.ZipFile(src) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _write_zip(path: Path, entries: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def test_high_compression_ratio_is_refused(tmp_path: Path) -> None:
    entries = _torch_zip_entries(tmp_path)
    root = entries[0][0].split("/")[0]
    entries.append((f"{root}/data/99", bytes(4 * 1024 * 1024)))  # 4 MiB of zeros deflate ~1000:1
    path = _write_zip(tmp_path / "bomb.pt", entries, zipfile.ZIP_DEFLATED)
    with pytest.raises(UnsafeInputError, match="compression ratio"):
        load_state_dict(path)


def test_entry_and_size_limits(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "many.zip", [(f"d/{i}.bin", b"x" * 100) for i in range(12)])
    infos = check_zip(path, max_entries=12, max_total_bytes=10_000, max_entry_bytes=100, max_ratio=10)
    assert len(infos) == 12
    with pytest.raises(UnsafeInputError, match="12 entries"):
        check_zip(path, max_entries=11, max_total_bytes=10_000, max_entry_bytes=100, max_ratio=10)
    with pytest.raises(UnsafeInputError, match="per-entry limit"):
        check_zip(path, max_entries=100, max_total_bytes=10_000, max_entry_bytes=99, max_ratio=10)
    with pytest.raises(UnsafeInputError, match="in total"):
        check_zip(path, max_entries=100, max_total_bytes=1000, max_entry_bytes=100, max_ratio=10)
    # The ratio limit applies to entries above ratio_min_bytes.
    zpath = _write_zip(tmp_path / "zeros.zip", [("z.bin", bytes(50_000))], zipfile.ZIP_DEFLATED)
    check_zip(zpath, max_entries=10, max_total_bytes=10**6, max_entry_bytes=10**6, max_ratio=5)
    with pytest.raises(UnsafeInputError, match="z.bin"):
        check_zip(
            zpath,
            max_entries=10,
            max_total_bytes=10**6,
            max_entry_bytes=10**6,
            max_ratio=5,
            ratio_min_bytes=1000,
        )


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "overlap.zip", [("a.bin", b"a" * 1000), ("b.bin", b"b" * 1000)])
    raw = bytearray(path.read_bytes())
    second = raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 4)  # central record of b.bin
    raw[second + 42 : second + 46] = struct.pack("<I", 0)  # point it at a.bin's local header
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsafeInputError, match="overlaps"):
        check_zip(path)


def test_read_entry_refuses_lying_sizes(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "lie.zip", [("a.bin", b"a" * 1000)])
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", 10)  # declared uncompressed size: 10 bytes
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as zf:
        with pytest.raises(InputError, match="a.bin"):
            read_entry(zf, "a.bin")
        with pytest.raises(UnsafeInputError, match="limit"):
            read_entry(zf, zf.getinfo("a.bin"), max_bytes=5)


# --------------------------------------------------------------------------------------- (c) unsafe names


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.txt", "'..'"),
        ("archive/../../evil.txt", "'..'"),
        ("/etc/passwd", "absolute"),
        ("archive\\..\\evil.txt", "backslash"),
        ("C:/Windows/evil.txt", "drive letter"),
    ],
)
def test_unsafe_entry_names_are_refused(tmp_path: Path, name: str, problem: str) -> None:
    entries = _torch_zip_entries(tmp_path) + [(name, b"boo")]
    path = _write_zip(tmp_path / "traversal.pt", entries)
    with pytest.raises(UnsafeInputError, match=problem):
        load_state_dict(path)
    with pytest.raises(UnsafeInputError, match=problem):
        check_zip(path)


def test_symlink_and_duplicate_entries_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("data/link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeInputError, match="symbolic link"):
        check_zip(path)

    dup = tmp_path / "dup.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        _write_zip(dup, [("a/x.bin", b"1"), ("a/x.bin", b"2")])
    with pytest.raises(UnsafeInputError, match="more than once"):
        check_zip(dup)


def test_check_zip_accepts_file_objects_and_real_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save(_small_sd(), path)
    infos = check_zip(path)
    assert any(i.filename.endswith("data.pkl") for i in infos)
    buf = io.BytesIO(path.read_bytes())
    assert len(check_zip(buf)) == len(infos)
    with pytest.raises(InputError, match="not a valid zip"):
        check_zip(io.BytesIO(b"not a zip at all"))


# ------------------------------------------------------------------------------------ (d) wrappers/prefixes


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3, "best_prec1": 91.5},
        lambda sd: {"model_state_dict": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"model": sd},
        lambda sd: {"net": sd, "acc": torch.tensor(0.9)},
        lambda sd: {"module": sd},
        lambda sd: {"model": {"state_dict": sd}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    ],
)
def test_wrappers_and_prefixes_are_unwrapped(tmp_path: Path, wrap) -> None:
    sd = _small_sd()
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(sd), path)
    out = load_state_dict(path)
    assert sorted(out) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(out[k], v)


def test_prefix_only_stripped_when_on_every_key(tmp_path: Path) -> None:
    sd = {"module.weight": torch.ones(1), "head.weight": torch.ones(1)}  # a submodule called "module"
    path = tmp_path / "sub.pt"
    torch.save(sd, path)
    assert sorted(load_state_dict(path)) == ["head.weight", "module.weight"]
    torch.save({"backbone._orig_mod.conv.weight": torch.ones(1)}, path)  # compiled submodule
    assert list(load_state_dict(path)) == ["backbone.conv.weight"]


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([torch.zeros(2), torch.ones(2)], "holds a list"),
        ({"epoch": 3, "lr": 0.1}, "contains no tensors"),
        ({}, "contains no tensors"),
        (torch.zeros(3), "holds a Tensor"),
    ],
)
def test_wrong_structure_says_what_was_expected(tmp_path: Path, obj: object, match: str) -> None:
    path = tmp_path / "wrong.pt"
    torch.save(obj, path)
    with pytest.raises(InputError, match=match) as info:
        load_state_dict(path)
    assert "expected a state_dict (mapping of parameter names to tensors)" in str(info.value)
    assert not isinstance(info.value, UnsafeInputError)


# --------------------------------------------------------------------------------------- (e) safetensors


def test_safetensors_roundtrip_with_shared_and_strided_tensors(tmp_path: Path) -> None:
    base = torch.randn(6, 4)
    sd = {"a": base, "tied": base, "t": base.t(), "half": torch.randn(3).half(), "empty": torch.zeros(0)}
    path = save_state_dict(sd, tmp_path / "out" / "w.safetensors", metadata={"arch": "tiny"})
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    out = load_state_dict(path)
    assert sorted(out) == sorted(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)
    meta = checkpoint_meta(path)
    assert meta["format"] == "safetensors"
    assert meta["size"] == path.stat().st_size
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_format_is_detected_by_content_not_name(tmp_path: Path) -> None:
    sd = _small_sd()
    st = save_state_dict(sd, tmp_path / "weights.pt")  # safetensors content, .pt name
    assert checkpoint_meta(st)["format"] == "safetensors"
    assert sorted(load_state_dict(st)) == sorted(sd)
    pt = tmp_path / "weights.safetensors"
    torch.save(sd, pt)  # torch zip content, .safetensors name
    assert checkpoint_meta(pt)["format"] == "torch-zip"
    assert sorted(load_state_dict(pt)) == sorted(sd)
    legacy = tmp_path / "old.bin"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert checkpoint_meta(legacy)["format"] == "torch-legacy"
    assert sorted(load_state_dict(legacy)) == sorted(sd)


# ------------------------------------------------------------------------------------ (f) corrupt input


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(os.urandom(0) + b"\x13\x37garbage bytes, not a checkpoint" * 10),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"\x80\x02" + b"\xff" * 64),
        lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 200),
    ],
    ids=["garbage", "empty", "bad-pickle", "bad-zip"],
)
def test_garbage_is_input_error(tmp_path: Path, make) -> None:
    path = tmp_path / "junk.pt"
    make(path)
    with pytest.raises(InputError) as info:
        load_state_dict(path)
    assert not isinstance(info.value, UnsafeInputError)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_checkpoint_is_input_error(tmp_path: Path, legacy: bool) -> None:
    full = tmp_path / "full.pt"
    torch.save({"w": torch.randn(256, 64)}, full, _use_new_zipfile_serialization=not legacy)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_state_dict(cut)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_state_dict(tmp_path / "nope.pt")


# --------------------------------------------------------------------------------- (g) programs refused


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        torch.jit.script(nn.Linear(3, 2)).save(str(path))
    assert checkpoint_meta(path)["format"] == "torchscript"
    with pytest.raises(UnsafeInputError, match="TorchScript archive.*only weights are accepted"):
        load_state_dict(path)


def test_torch_export_archive_is_refused(tmp_path: Path) -> None:
    # The layout torch.export.save writes (real export takes ~10 s on first use, too slow for this suite).
    entries = [
        ("exported/data/weights/weight_0", struct.pack("<6f", *range(6))),
        ("exported/data/weights/model_weights_config.json", b"{}"),
        ("exported/models/model.json", b"{}"),
        ("exported/archive_format", b"pt2"),
        ("exported/archive_version", b"0"),
        ("exported/byteorder", b"little"),
    ]
    path = _write_zip(tmp_path / "exported.pt2", entries)
    with pytest.raises(UnsafeInputError, match="torch.export.*only weights are accepted"):
        load_state_dict(path)
    renamed = tmp_path / "exported.pt"  # the extension does not matter
    renamed.write_bytes(path.read_bytes())
    assert checkpoint_meta(renamed)["format"] == "torch-export"
    with pytest.raises(UnsafeInputError, match="only weights are accepted"):
        load_state_dict(renamed)


# ----------------------------------------------------------------------------------- (h) shared ResNet-56


def test_shared_resnet56_checkpoint_loads() -> None:
    path = SHARED / "checkpoints" / "resnet56-4bfd9763.th"
    if not path.is_file():
        pytest.skip(f"shared checkpoint not available at {path}")
    sd = load_state_dict(path)
    assert sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    assert not any(k.startswith("module.") for k in sd)
    assert sd["conv1.weight"].shape == (16, 3, 3, 3)
    assert sd["linear.weight"].shape == (10, 64)
    assert "layer3.8.conv2.weight" in sd
    meta = checkpoint_meta(path)
    assert meta["format"] == "torch-legacy"
    assert meta["sha256"].startswith("4bfd9763")


@pytest.mark.parametrize("protocol", [4, 5])
def test_raw_pickle_is_called_unsafe_not_corrupt(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"w": torch.zeros(2)}, protocol=protocol))
    with pytest.raises(UnsafeInputError, match=f"raw pickle \\(protocol {protocol}\\)"):
        load_state_dict(path)
