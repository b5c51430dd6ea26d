"""The one method registry: catalogue entries, option validation, third-party methods through entry points."""

from __future__ import annotations

import pytest
import torch

import simprune
from simprune.errors import InputError
from simprune.methods import Criterion, get_criterion, get_method, list_methods, method_class

BUILTIN = {"l1", "l2", "fpgm", "bn_scale", "random", "passive_sim", "nystrom_sim", "qsfm", "channel_cluster",
           "recon", "dcff", "ssc"}


def test_catalogue_lists_every_builtin_with_typed_options() -> None:
    methods = {m["name"]: m for m in list_methods()}
    assert BUILTIN <= set(methods)
    for m in methods.values():
        assert {"name", "summary", "kind", "needs_data", "trains", "options", "options_schema"} <= set(m)
        for o in m["options"]:
            assert {"name", "type", "default", "help"} <= set(o) and o["help"], (m["name"], o)
        # the defaults are valid options
        assert method_class(m["name"]).validate_options({})
    assert methods["dcff"]["trains"] and methods["dcff"]["kind"] == "training"
    assert methods["qsfm"]["needs_data"] and not methods["l1"]["needs_data"]
    nystrom = {o["name"]: o for o in methods["nystrom_sim"]["options"]}
    assert nystrom["m"]["ge"] == 1 and nystrom["landmarks"]["choices"] == ["first", "random", "kmeans++"]


@pytest.mark.parametrize("options, needle", [
    ({"mm": 3}, "mm"),  # unknown
    ({"m": "3"}, "m: Input should be a valid integer"),  # wrong type
    ({"m": 0}, "m: Input should be greater than or equal to 1"),  # out of range
    ({"landmarks": "best"}, "landmarks"),  # not a choice
    ({"rtol": float("nan")}, "rtol"),  # not finite
])
def test_bad_options_are_refused_by_name(options: dict, needle: str) -> None:
    with pytest.raises(InputError, match="nystrom_sim") as err:
        get_method("nystrom_sim", **options)
    assert needle in str(err.value)


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(InputError, match="choose one of: .*qsfm"):
        get_method("no_such_method")
    with pytest.raises(InputError, match="not a selection criterion"):
        get_criterion("dcff")


def test_a_plugin_method_registers_and_prunes(method_plugin: str) -> None:
    entry = {m["name"]: m for m in list_methods()}["keep_first"]
    assert entry["kind"] == "criterion" and entry["options"][-1]["name"] == "offset"
    assert isinstance(get_method("keep_first"), Criterion)
    with pytest.raises(InputError, match="offset"):
        get_method("keep_first", offset=-1)
    torch.manual_seed(0)
    model = simprune.build_model("cifar_resnet20")
    pruned, report = simprune.prune(model, torch.randn(1, 3, 16, 16), method="keep_first", pruning_ratio=0.5)
    assert report["method"] == "keep_first"
    assert all(layer["keep"] == list(range(len(layer["keep"]))) for layer in report["plan"]["layers"])
    assert pruned(torch.randn(2, 3, 16, 16)).shape == (2, 10)
