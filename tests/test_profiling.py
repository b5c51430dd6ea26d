"""Device profiles measured here: structure, the file round trip, the cached worker profile and the CLI.
Structure and sanity only (a tiny model, a few rounds): timings on a shared machine are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from simprune.profiles import load_profile, save_profile
from simprune.profiling import (
    ProfileSettings,
    ladder_counts,
    measure_profile,
    monotone_ladder,
    prune_group_copy,
    worker_profile,
)
from simprune.pruning.groups import discover_groups
from simprune.zoo import build_model

SIZE = (3, 16, 16)
QUICK = ProfileSettings(repeats=3, budget_s=20, threads=1, checks=1)


@pytest.fixture(scope="module")
def r20() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cifar_resnet20").eval()


@pytest.fixture(scope="module")
def measured(r20: torch.nn.Module, one_thread_module: None):
    return measure_profile(r20, "cifar_resnet20", SIZE, "cpu", QUICK)


def test_profile_structure_and_file_round_trip(measured, r20: torch.nn.Module, tmp_path: Path) -> None:
    prof = measured.profile
    _, specs, _ = discover_groups(r20, torch.zeros(1, *SIZE))
    assert set(prof.groups) == {s.name for s in specs}  # nothing left out at this budget
    assert prof.arch == "cifar_resnet20" and prof.input_size == SIZE and prof.batch_size == 1
    assert prof.dense_ms > 0 and 0 <= prof.fixed_ms <= prof.dense_ms
    assert prof.round_to in (1, 4, 8, 16) and measured.round_scores
    for g in prof.groups.values():
        ks = [k for k, _ in g.ladder]
        assert ks == sorted(ks) and all(0 < k < g.channels for k in ks)
        assert all(ms <= prof.dense_ms for _, ms in g.ladder)
    assert len(prof.blocks) == 9 and all(b.groups for b in prof.blocks.values())
    assert prof.environment.device_type == "cpu" and prof.environment.threads == 1
    [check] = measured.checks
    assert check["predicted_ms"] > 0 and check["measured_ms"] > 0
    saved = load_profile(save_profile(prof, tmp_path / "p.json"))
    assert saved == prof


def test_a_replayed_group_cut_matches_the_model(r20: torch.nn.Module) -> None:
    base = r20
    example = torch.zeros(1, *SIZE)
    dg, specs, _ = discover_groups(base, example)
    spec = specs[0]
    variant = prune_group_copy(base, dg, spec, 8, example)
    assert dict(variant.named_modules())[spec.name].out_channels == 8
    assert dict(base.named_modules())[spec.name].out_channels == spec.n_channels  # the original is untouched
    assert variant(torch.randn(2, *SIZE)).shape == (2, 10)


def test_ladder_counts_and_monotone_ladder() -> None:
    assert ladder_counts(64, 1, 8, (0.25, 0.5, 0.75)) == [16, 32, 48]
    assert ladder_counts(16, 1, 16, (0.25, 0.5, 0.75)) == [4, 8, 12]  # rounding would leave nothing below 16
    assert ladder_counts(96, 2, 8, (0.5,)) == [48]
    assert monotone_ladder([(4, 2.6), (8, 2.5), (12, 2.8)], 2.65) == [(4, 2.55), (8, 2.55), (12, 2.65)]


def test_worker_profile_is_measured_once_and_cached(r20: torch.nn.Module, tmp_path: Path, measured,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from simprune import profiling

    calls = []

    def fake(model, arch, input_size, device, settings=None, progress=None):
        calls.append(settings.batch_size)
        return measured

    monkeypatch.setattr(profiling, "measure_profile", fake)
    first = worker_profile("cifar_resnet20", r20, torch.zeros(1, *SIZE), "cpu", tmp_path)
    again = worker_profile("cifar_resnet20", r20, torch.zeros(1, *SIZE), "cpu", tmp_path)
    assert calls == [1] and first == again == measured.profile
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_cli_profile_writes_a_valid_file(tmp_path: Path, one_thread_module: None) -> None:
    from simprune.cli import local

    app = typer.Typer()
    local.register(app)
    out = tmp_path / "profile.json"
    res = CliRunner().invoke(app, ["profile", "--arch", "cifar_resnet20", "--device", "cpu", "--threads", "1",
                                   "--input-size", "3", "16", "16", "--budget-s", "8", "--checks", "1",
                                   "--no-round-to", "--out", str(out)])
    assert res.exit_code == 0, res.output
    prof = load_profile(out)
    assert prof.arch == "cifar_resnet20" and prof.input_size == SIZE and prof.round_to is None
    assert "check:" in res.output and "predicted" in res.output and json.loads(out.read_text())["groups"]
    bad = CliRunner().invoke(app, ["profile", "--arch", "no_such_arch", "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and "unknown architecture" in bad.output


def test_profile_in_the_deployed_precision_and_layout(tmp_path: Path, one_thread_module: None) -> None:
    """bf16 + channels_last (what GPUs deploy): the models are timed that way and the environment says so."""
    from simprune.cli import local

    torch.manual_seed(0)
    tiny = build_model("cifar_resnet20").eval()
    res = measure_profile(tiny, "cifar_resnet20", (3, 8, 8), "cpu", ProfileSettings(
        repeats=3, budget_s=15, threads=1, checks=0, round_candidates=(), dtype="bfloat16", channels_last=True))
    env = res.profile.environment
    assert env.dtype == "bfloat16" and env.channels_last and res.profile.groups
    assert next(iter(tiny.parameters())).dtype == torch.float32  # the caller's model is left as it was
    with pytest.raises(ValueError, match="profile dtype"):
        measure_profile(tiny, "cifar_resnet20", (3, 8, 8), "cpu", ProfileSettings(dtype="int8"))
    app = typer.Typer()
    local.register(app)
    bad = CliRunner().invoke(app, ["profile", "--arch", "cifar_resnet20", "--dtype", "float64",
                                   "--out", str(tmp_path / "p.json")])
    assert bad.exit_code == 2 and "--dtype" in bad.output


def test_profile_matches_only_the_device_and_thread_count_it_was_measured_with(measured) -> None:
    """A pruning choice is measured against the profile only on the profile's own device and thread count (the
    report's same-device test and the measured correction share this one check)."""
    from simprune.profiling import profile_matches

    prof = measured.profile
    cpu = torch.device("cpu")
    assert profile_matches(prof, cpu, threads=1)
    assert not profile_matches(prof, cpu, threads=2)
    other = prof.model_copy(update={"environment": prof.environment.model_copy(update={"device_name": "other"})})
    assert not profile_matches(other, cpu, threads=1)
    cuda = prof.model_copy(update={"environment": prof.environment.model_copy(update={"device_type": "cuda"})})
    assert not profile_matches(cuda, cpu, threads=1)


def test_profile_settings_place_models_and_inputs_in_the_timed_precision_and_layout() -> None:
    settings = ProfileSettings(dtype="bfloat16", channels_last=True)
    conv = settings.place(torch.nn.Conv2d(3, 4, 3).train(), torch.device("cpu"))
    assert conv.weight.dtype == torch.bfloat16 and not conv.training
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = settings.place_input(torch.randn(2, 3, 8, 8), torch.device("cpu"))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert ProfileSettings().place_input(torch.randn(2, 3), torch.device("cpu")).dtype == torch.float32
