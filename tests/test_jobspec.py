"""The one job spec: cross-field rules, per-method option checks and data requirements, in the engine and in
the CLI (exit code 2, the field named) before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from simprune.checkpoint import save_state_dict
from simprune.jobspec import JobSpec
from simprune.zoo import build_model


def _errors(**fields: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(fields)
    return [(e["loc"], e["msg"]) for e in err.value.errors()]


def test_exactly_one_target_and_ratio_range() -> None:
    assert "exactly one" in _errors(method="l1")[0][1]
    assert "exactly one" in _errors(method="l1", target_flops_reduction=0.5, pruning_ratio=0.5)[0][1]
    assert _errors(method="l1", pruning_ratio=1.5)
    assert _errors(method="l1", target_flops_reduction=1.0)[0][0] == ("target_flops_reduction",)
    assert "sensitivity" in _errors(method="l1", pruning_ratio="auto", allocation="sensitivity")[0][1]


@pytest.mark.parametrize("options, needle", [
    ({"ridge": -1.0}, "ridge: Input should be greater than or equal to 0"),
    ({"ridge": "big"}, "ridge: Input should be a valid number"),
    ({"ridge": 1e-3, "lambda": 2}, "lambda: Extra inputs are not permitted"),
])
def test_method_options_checked_with_the_field_named(options: dict, needle: str) -> None:
    [(loc, msg)] = _errors(method="recon", target_flops_reduction=0.5, options=options)
    assert loc == ("options",) and needle in msg and "recon" in msg


def test_unknown_method_and_bad_finetune_fields() -> None:
    [(loc, msg)] = _errors(method="qsfn", target_flops_reduction=0.5)
    assert loc == ("method",) and "qsfm" in msg
    errs = _errors(method="l1", target_flops_reduction=0.5, finetune={"epochs": 0, "lr": float("inf"), "x": 1})
    assert {loc for loc, _ in errs} == {("finetune", "epochs"), ("finetune", "lr"), ("finetune", "x")}


def test_data_requirements_name_the_missing_data() -> None:
    qsfm = JobSpec(method="qsfm", target_flops_reduction=0.5)
    assert qsfm.data_errors(has_calibration=False, has_training=False)[0][0] == "calibration"
    assert qsfm.data_errors(has_calibration=True, has_training=False) == []
    dcff = JobSpec(method="dcff", pruning_ratio=0.5, allocation="global", finetune={"epochs": 1})
    fields = {f for f, _ in dcff.data_errors(has_calibration=False, has_training=False)}
    assert fields == {"training", "allocation"}
    ssc_auto = JobSpec(method="ssc", pruning_ratio="auto", finetune={"epochs": 1})
    assert [f for f, _ in ssc_auto.data_errors(True, True)] == ["pruning_ratio"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_state_dict(build_model("cifar_resnet20").state_dict(),
                           tmp_path_factory.mktemp("ckpt") / "r20.safetensors")


@pytest.mark.parametrize("extra, needle", [
    (["--method", "nystrom_sim", "--option", "mm=3"], "mm: Extra inputs are not permitted"),
    (["--method", "nystrom_sim", "--option", "m=three"], "m: Input should be a valid integer"),
    (["--method", "nystrom_sim", "--option", "m=0"], "m: Input should be greater than or equal to 1"),
    (["--method", "l1", "--finetune-epochs", "1", "--lr", "-1"], "finetune.lr"),
])
def test_cli_refuses_invalid_jobs_before_running(checkpoint: Path, tmp_path: Path, extra: list[str],
                                                 needle: str) -> None:
    import typer

    from simprune.cli import local

    app = typer.Typer()
    local.register(app)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["prune", "--arch", "cifar_resnet20", "--weights", str(checkpoint), "--out",
                                   str(out), "--target-flops-reduction", "0.3", *extra])
    assert res.exit_code == 2, res.output
    assert "invalid job" in res.output and needle in res.output and "Traceback" not in res.output
    assert not out.exists()  # refused before anything ran


def test_submit_with_a_bad_ratio_is_a_clear_cli_error(checkpoint: Path) -> None:
    import typer

    from simprune.cli import remote

    app = typer.Typer()
    remote.register(app)
    res = CliRunner().invoke(app, ["submit", str(checkpoint), "--arch", "cifar_resnet20", "--method", "l1",
                                   "--pruning-ratio", "abc"])
    assert res.exit_code == 2 and "--pruning-ratio" in res.output and "Traceback" not in res.output


def test_latency_target_fields() -> None:
    spec = JobSpec(method="l1", target_speedup=2.0, latency_profile="worker")
    assert spec.target_speedup == 2.0 and spec.measure_latency is None and spec.target_flops_reduction is None
    assert "exactly one" in _errors(method="l1", target_speedup=2.0, target_flops_reduction=0.5)[0][1]
    assert "exactly one" in _errors(method="l1", target_speedup=2.0, pruning_ratio=0.5)[0][1]
    assert _errors(method="l1", target_speedup=1.0)[0][0] == ("target_speedup",)
    assert _errors(method="l1", target_speedup=25)[0][0] == ("target_speedup",)
    assert _errors(method="l1", target_speedup=2.0, latency_profile="file.json")[0][0] == ("latency_profile",)
    assert "trains the network" in _errors(method="dcff", target_speedup=2.0, finetune={"epochs": 1})[0][1]
    assert "depth needs allocation 'sensitivity'" in _errors(method="l1", target_speedup=2.0, depth=True,
                                                           allocation="uniform")[0][1]
    assert _errors(method="l1", target_flops_reduction=0.5, latency_batch_sizes=[0])[0][0] == (
        "latency_batch_sizes",)


def test_cli_refuses_a_missing_profile_file(checkpoint: Path, tmp_path: Path) -> None:
    import typer

    from simprune.cli import local

    app = typer.Typer()
    local.register(app)
    res = CliRunner().invoke(app, ["prune", "--arch", "cifar_resnet20", "--weights", str(checkpoint), "--out",
                                   str(tmp_path / "out"), "--target-speedup", "2", "--profile",
                                   str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "profile not found" in res.output and not (tmp_path / "out").exists()


def test_latency_default_follows_the_operator_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from simprune.jobspec import measure_latency_default

    monkeypatch.delenv("SIMPRUNE_MEASURE_LATENCY", raising=False)
    assert measure_latency_default() is True
    for off in ("0", "false", "OFF"):
        monkeypatch.setenv("SIMPRUNE_MEASURE_LATENCY", off)
        assert measure_latency_default() is False


def test_output_reconstruction_switch() -> None:
    best = JobSpec(method="l1", target_flops_reduction=0.5, preset="best").settings(has_calibration=True)
    assert best["compensation"]["output_recon"] and best["compensation"]["block_recon"]
    off = JobSpec(method="l1", target_flops_reduction=0.5, preset="best", compensation={"output_recon": False})
    assert off.settings(has_calibration=True)["compensation"]["output_recon"] is False
    assert _errors(method="l1", target_flops_reduction=0.5, compensation={"distil": True})
    assert best["compensation_options"].get("output_recon_augment") is None  # the engine's default: shift_flip
    shifts = JobSpec(method="l1", target_flops_reduction=0.5, output_recon_augment="shift")
    assert shifts.settings(has_calibration=True)["compensation_options"]["output_recon_augment"] == "shift"
    assert _errors(method="l1", target_flops_reduction=0.5, output_recon_augment="mirror")
    assert best["compensation_options"].get("output_recon_mix") is None  # the engine's default
    mixed = JobSpec(method="l1", target_flops_reduction=0.5, output_recon_mix="mixup")
    assert mixed.settings(has_calibration=True)["compensation_options"]["output_recon_mix"] == "mixup"
    assert _errors(method="l1", target_flops_reduction=0.5, output_recon_mix="blend")
    from simprune.cli.local import _switches

    assert _switches(no_fold=False, no_lstsq=False, no_bn=False, sequential=None, block_recon=None,
                     output_recon=False) == {"output_recon": False}
