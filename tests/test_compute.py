"""Channels-last and bf16 autocast for the reconstruction stages: formats restored, precision as chosen, same fit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from simprune.compensation.block_recon import _fit_unit
from simprune.compensation.output_recon import reconstruct_outputs
from simprune.compute import autocast, bf16_native, channels_last, to_channels_last, use_bf16
from simprune.zoo import build_model


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()


def test_channels_last_is_undone_and_keeps_parameter_identity() -> None:
    net = _net()
    ids = [id(p) for p in net.parameters()]
    with channels_last(net) as on:
        assert on and net[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not net[0].weight.is_contiguous()
        assert [id(p) for p in net.parameters()] == ids  # an optimiser built inside sees the same tensors
    assert on and all(p.is_contiguous() for p in net.parameters()) and [id(p) for p in net.parameters()] == ids
    flat = nn.Linear(4, 2)
    with channels_last(flat) as on_flat:  # nothing to convert in a model without 2-D convolutions
        assert not on_flat
    with channels_last(net, enabled=False) as off:
        assert not off and net[0].weight.is_contiguous()
    with pytest.raises(RuntimeError), channels_last(net):
        raise RuntimeError("boom")
    assert net[0].weight.is_contiguous()  # restored on errors too
    x = torch.randn(2, 3, 5, 5)
    assert to_channels_last(x, True).is_contiguous(memory_format=torch.channels_last)
    assert to_channels_last(x, False) is x and to_channels_last(torch.randn(2, 3), True).dim() == 2


def test_bf16_is_native_only_with_the_bf16_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN says bf16 is supported on any AVX-512 CPU, where it emulates it (slower than fp32): on x86 the
    bf16 instructions themselves (AVX-512 BF16, AMX) decide, and an ISA cap below them turns bf16 off."""
    from simprune import compute

    cpu = torch.device("cpu")
    monkeypatch.setattr(compute.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for avx512_bf16, amx, native in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert bf16_native(cpu) is native
        assert use_bf16(None, cpu) is native
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    for cap, native in (("AVX512_CORE", False), ("avx2", False), ("AVX512_CORE_BF16", True),
                        ("AVX512_CORE_AMX", True), ("ALL", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert bf16_native(cpu) is native, cap
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert not bf16_native(cpu)  # oneDNN without bf16 kernels at all
    monkeypatch.setattr(compute.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert bf16_native(cpu)  # Arm: oneDNN's check reads the bf16 extension


def test_bf16_choice_and_autocast() -> None:
    cpu = torch.device("cpu")
    assert isinstance(bf16_native(cpu), bool)
    assert use_bf16(None, cpu) == bf16_native(cpu) and use_bf16(True, cpu) and not use_bf16(False, cpu)
    assert not bf16_native(torch.device("meta"))
    net = _net()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), autocast(cpu, True):
        assert net(x).dtype == torch.bfloat16
    with torch.no_grad(), autocast(cpu, False):
        assert net(x).dtype == torch.float32
    assert net[0].weight.dtype == torch.float32  # autocast never changes the stored weights


@pytest.mark.parametrize("bf16", [False, True])
def test_unit_fit_lowers_the_error_in_either_precision(bf16: bool, one_thread_module: None) -> None:
    torch.manual_seed(1)
    teacher, student = _net(), _net()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        y = teacher(x)
        before = float(((student(x) - y) ** 2).mean())
    _fit_unit(student, x, y, steps=60, lr=1e-2, batch=16, seed=0, bf16=bf16, fast_format=True)
    with torch.no_grad():
        after = float(((student(x) - y) ** 2).mean())
    assert after < 0.5 * before
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in student.parameters())


def test_output_reconstruction_reports_its_precision_and_gives_weights_back_contiguous(
        one_thread_module: None) -> None:
    torch.manual_seed(0)
    dense = build_model("cifar_resnet20").eval()
    pruned = copy.deepcopy(dense)
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p))
    calib = torch.randn(48, 3, 16, 16)
    for bf16, teacher_bf16 in ((False, False), (True, False), (False, True)):
        m = copy.deepcopy(pruned)
        info = reconstruct_outputs(dense, m, calib, steps=30, lr=1e-3, batch_size=16, bf16=bf16,
                                   teacher_bf16=teacher_bf16)
        assert info["bf16"] is bf16 and info["teacher_bf16"] is (bf16 or teacher_bf16)
        assert info["channels_last"] is True
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert info["held_out_loss_after"] < info["held_out_loss_before"]
        assert all(p.is_contiguous() for p in m.parameters()) and all(p.is_contiguous() for p in dense.parameters())
    plain = reconstruct_outputs(dense, copy.deepcopy(pruned), calib, steps=2, fast_format=False)
    assert plain["channels_last"] is False


def test_calibration_image_batches_come_channels_last() -> None:
    from simprune.pruning.features import first_inputs, iter_inputs

    images = [b for b in iter_inputs(torch.randn(70, 3, 4, 4))]
    assert [len(b) for b in images] == [64, 6]
    assert all(b.is_contiguous(memory_format=torch.channels_last) for b in images)
    assert first_inputs(torch.randn(10, 3, 4, 4), 8).is_contiguous(memory_format=torch.channels_last)
    audio = next(iter_inputs([(torch.randn(2, 1, 100), torch.zeros(2))]))
    assert audio.is_contiguous() and audio.shape == (2, 1, 100)  # only 4-D image batches change format
