"""What a call of a recurrence takes, as plain data: its inputs' names, layouts and domains.

Derived from the IR (``Recurrence.signature``) and kept in the kernel cache, so that the op checks a
call without sympy (gdnc.emit.cache.library_signature). Layouts are FLA's: q, k [B, T, H, K];
v [B, T, HV, V]; a per-token scalar [B, T, HV]; a per-head scalar [HV]; a per-channel vector
[B, T, HV, K|V]; an extra key [B, T, H, K].
"""
from __future__ import annotations

import dataclasses

KINDS = ("token", "head", "channel", "key")


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One declared input of a recurrence.

    kind:     "token" (a scalar per token and value head), "head" (a scalar per value head),
              "channel" (a vector per token and value head over ``channel``, K or V), "key" (a
              K-vector per token and q/k head)
    log_gate: the update reads it only through exp(): a log-space gate, so it must be <= 0 (a
              larger one grows the state, and the chunked form's exponents would be positive)
    """

    name: str
    kind: str
    channel: str | None = None
    log_gate: bool = False

    def __post_init__(self):
        if self.kind not in KINDS or (self.kind == "channel") != (self.channel in ("K", "V")):
            raise ValueError(f"InputSpec {self.name!r}: kind must be one of {KINDS} (channel 'K' or 'V' exactly for "
                             f"'channel'), got kind={self.kind!r}, channel={self.channel!r}")

    @property
    def layout(self) -> str:
        """The layout as text, e.g. "[B, T, HV]"."""
        return {"token": "[B, T, HV]", "head": "[HV]", "channel": f"[B, T, HV, {self.channel}]",
                "key": "[B, T, H, K]"}[self.kind]

    def shape(self, B: int, T: int, H: int, HV: int, K: int, V: int) -> tuple[int, ...]:
        """The tensor shape this input takes in a call."""
        return {"token": (B, T, HV), "head": (HV,), "channel": (B, T, HV, K if self.channel == "K" else V),
                "key": (B, T, H, K)}[self.kind]


@dataclasses.dataclass(frozen=True)
class Signature:
    """A recurrence's call: its name (for messages), IR hash and declared inputs, sorted by name."""

    name: str
    ir_hash: str
    inputs: tuple[InputSpec, ...]

    def text(self) -> str:
        """The inputs as text: "beta [B, T, HV], g [B, T, HV]" (or "none")."""
        return ", ".join(f"{s.name} {s.layout}" for s in self.inputs) or "none"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Signature":
        return cls(data["name"], data["ir_hash"], tuple(InputSpec(**spec) for spec in data["inputs"]))
