"""Device latency profiles: the file format, its limits, and the latency it predicts for a pruning choice.

A profile is measured on the deployment device (``simprune profile``, :mod:`simprune.profiling`) and says
how long the dense model takes there, how much time each prunable group saves at a ladder of kept channel
counts (the other groups dense), and how much each removable residual block saves when dropped. Pruning
with a latency target predicts the pruned model's time additively from it:

    predicted = dense_ms - sum(saving of each group at its kept count) - sum(saving of each dropped block)

where a dropped block's own groups count no saving of their own (the block's saving covers them). The
format is plain JSON validated by :class:`DeviceProfile` (no code, bounded size), so profiles can come from
untrusted users (``POST /v1/device-profiles``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simprune.errors import InputError

PROFILE_FORMAT = "simprune-device-profile/1"
MAX_PROFILE_BYTES = 4_000_000
MAX_GROUPS = 4096
MAX_LADDER = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ProfileEnvironment(_Strict):
    """Where the profile was measured."""

    device_type: Literal["cpu", "cuda"]
    device_name: str = Field(max_length=200)
    threads: int | None = Field(default=None, ge=1, le=4096, description="CPU threads (torch.get_num_threads)")
    torch: str = Field(max_length=64)
    onnxruntime: str | None = Field(default=None, max_length=64)
    platform: str = Field(default="", max_length=200)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    mode: Literal["eager", "compile", "onnxruntime"] = "eager"
    channels_last: bool = False


class GroupLatency(_Strict):
    """One prunable group: its channel count and ``(kept channels, model ms)`` measured with only it pruned."""

    channels: int = Field(ge=1, le=1_000_000)
    ladder: list[tuple[int, float]] = Field(min_length=1, max_length=MAX_LADDER)

    @model_validator(mode="after")
    def _sane(self) -> GroupLatency:
        for k, ms in self.ladder:
            if not 0 <= k <= self.channels or ms < 0:
                raise ValueError(f"ladder entry ({k}, {ms}) outside 0..{self.channels} channels or negative")
        return self

    def saving(self, dense_ms: float, kept: int) -> float:
        """Time saved with ``kept`` channels: linear between measured counts, none at the full count."""
        pts = sorted(({k: dense_ms - ms for k, ms in self.ladder} | {self.channels: 0.0}).items())
        if kept >= pts[-1][0]:
            return pts[-1][1]
        if kept <= pts[0][0]:
            return pts[0][1]
        for (k0, s0), (k1, s1) in zip(pts, pts[1:], strict=False):
            if k0 <= kept <= k1:
                return s0 + (s1 - s0) * (kept - k0) / (k1 - k0)
        return 0.0  # unreachable


class BlockLatency(_Strict):
    """One removable residual block: model ms with it dropped, and the groups that live inside it."""

    ms: float = Field(ge=0)
    groups: list[str] = Field(default_factory=list, max_length=64)


class DeviceProfile(_Strict):
    """A latency table for one architecture at one input size and batch size on one device."""

    format: Literal["simprune-device-profile/1"] = PROFILE_FORMAT
    arch: str = Field(max_length=200)
    input_size: tuple[int, ...] = Field(min_length=1, max_length=4)
    batch_size: int = Field(ge=1, le=65536)
    environment: ProfileEnvironment
    created: datetime
    dense_ms: float = Field(gt=0)
    fixed_ms: float = Field(ge=0, description="time of what no pruning choice can remove")
    round_to: int | None = Field(default=None, ge=1, le=1024, description="channel multiple found fastest")
    groups: dict[str, GroupLatency] = Field(default_factory=dict, max_length=MAX_GROUPS)
    blocks: dict[str, BlockLatency] = Field(default_factory=dict, max_length=MAX_GROUPS)

    def predict_ms(self, keep: dict[str, int], dropped: set[str] | frozenset[str] = frozenset()) -> float:
        """Predicted model time for kept counts per group and dropped blocks (groups not named stay dense)."""
        inside = {g for b in dropped for g in self.blocks[b].groups}
        saved = sum(self.dense_ms - self.blocks[b].ms for b in dropped)
        for name, k in keep.items():
            if name in self.groups and name not in inside:
                saved += self.groups[name].saving(self.dense_ms, k)
        return max(self.dense_ms - saved, self.fixed_ms, 1e-6)

    def predicted_speedup(self, keep: dict[str, int], dropped: set[str] | frozenset[str] = frozenset()) -> float:
        """``dense_ms / predict_ms(...)``."""
        return self.dense_ms / self.predict_ms(keep, dropped)


def parse_profile(data: bytes | str | dict) -> DeviceProfile:
    """Validate a profile (bytes/str of JSON or a parsed dict); :class:`InputError` naming the first problem."""
    if isinstance(data, bytes | str):
        if len(data) > MAX_PROFILE_BYTES:
            raise InputError(f"profile is larger than {MAX_PROFILE_BYTES} bytes")
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise InputError(f"profile is not valid JSON: {e}") from None
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "profile"
        raise InputError(f"invalid device profile: {where}: {err['msg']}") from None


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate a profile file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"profile file {p} does not exist")
    if p.stat().st_size > MAX_PROFILE_BYTES:
        raise InputError(f"profile {p.name} is larger than {MAX_PROFILE_BYTES} bytes")
    return parse_profile(p.read_bytes())


def save_profile(profile: DeviceProfile, path: str | Path) -> Path:
    """Write ``profile`` as indented JSON."""
    p = Path(path)
    p.write_text(profile.model_dump_json(indent=1))
    return p
