"""Every kernel gdnc generates, declared once: its template, its config class, the chunk program it
implements (and the check that the rewritten program has the shape its template implements), and
its launch signature by name.

The launcher binds a call's arguments by name from the declaration (``KernelSpec.bind``); the
tests check each declaration against the TileLang signature of every rendered config; the custom
op schema and the exporter read the same declarations. Plain data: importing this needs neither
sympy nor jinja2 (gdnc.emit.shapes loads sympy only when a check runs).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gdnc.emit import shapes
from gdnc.emit.config import BackwardConfig, ForwardConfig, Heads, PrepareConfig

# fixed dimensions of a kernel's tensors, resolved from its Heads (and the chunk size); every other
# name is a dynamic size of the TileLang signature (T.dynamic), bound by the call
FIXED_DIMS = ("H", "HV", "K", "V", "C")
KINDS = ("in", "out", "inout", "scalar")


@dataclasses.dataclass(frozen=True)
class Param:
    """One launch argument. kind: "in" (read), "out" (written), "inout" (read and written),
    "scalar". dtype: a torch/TileLang dtype name, or "operand" (the Heads' dtype: q, k, v, A, o).
    shape: dimension names (FIXED_DIMS, or dynamic sizes named as in the template) or ints.
    only_if, unless: the config field that must be true, or false, for the kernel to take this
    argument (None: always)."""

    name: str
    kind: str
    dtype: str
    shape: tuple = ()
    only_if: str | None = None
    unless: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS or (self.kind == "scalar") != (self.shape == ()):
            raise ValueError(f"Param {self.name!r}: kind must be one of {KINDS}, with a shape exactly for "
                             f"tensors; got kind={self.kind!r}, shape={self.shape!r}")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """A generated kernel.

    template:      gdnc/templates/<template>
    config:        its config class (whose check(heads) refuses what the template cannot build), or
                   None: a kernel with nothing to tune
    program:       the chunk program it implements ("forward"), or None: context parallelism's
                   kernels, written from gdnc.runtime.cp's math
    form_check, program_check: gdnc.emit.shapes checks of the canonical form and of that program
    heads_check:   for a kernel without a config, what it refuses of the head shapes
    label_field, label_prefix: the config field that tells the op's variants apart, for file names
                   ("bv64")
    label_flags:   boolean config fields named in the label where true ("bv64-store_states")
    """

    name: str
    summary: str
    template: str
    config: type | None
    program: str | None
    params: tuple[Param, ...]
    form_check: Callable | None = None
    program_check: Callable | None = None
    heads_check: Callable[[Heads], None] | None = None
    label_field: str | None = None
    label_prefix: str = ""
    label_flags: tuple[str, ...] = ()

    def params_for(self, config) -> tuple[Param, ...]:
        """The arguments the build of ``config`` takes, in the kernel's order."""
        return tuple(p for p in self.params if (p.only_if is None or getattr(config, p.only_if))
                     and (p.unless is None or not getattr(config, p.unless)))

    def label(self, config) -> str | None:
        """A short name of ``config`` among the variants the op may run ("bv64", "heads4"), or None."""
        if self.label_field is None:
            return None
        flags = "".join(f"-{flag}" for flag in self.label_flags if getattr(config, flag))
        return f"{self.label_prefix}{getattr(config, self.label_field)}{flags}"

    def bind(self, names: tuple[str, ...], args: dict) -> list:
        """``args`` by name in the order ``names`` (params_for's), refusing a missing or unknown one."""
        try:
            if len(args) == len(names):
                return [args[n] for n in names]
        except KeyError:
            pass
        missing = [n for n in names if n not in args]
        unknown = sorted(set(args) - set(names))
        raise TypeError(f"{self.name}: missing arguments {missing}, unknown arguments {unknown}; it takes "
                        f"{', '.join(names)}")


def _tensor(name, dtype, *shape, kind="in", only_if=None, unless=None):
    return Param(name, kind, dtype, tuple(shape), only_if, unless)


def _cp_chain_heads(heads: Heads) -> None:
    if heads.v_dim % 32 or heads.k_dim % 16:
        raise ValueError(f"cp_chain needs V a multiple of 32 (its V block) and K of 16 (its 16 row groups of "
                         f"threads), got K={heads.k_dim}, V={heads.v_dim}")


F32, I32 = "float32", "int32"
ONLY_DS = "state_gradient_only"
KERNELS: dict[str, KernelSpec] = {spec.name: spec for spec in (
    KernelSpec(
        "gdn_prepare",
        "per chunk, the gate-free inverse (K Kᵀ, then substitution and block merges), the log2 gate cumsum "
        "and whether every transition contracts",
        "gdn_prepare.py.jinja", PrepareConfig, "forward",
        (_tensor("k", "operand", "T", "H", "K"), _tensor("g", F32, "T", "HV"), _tensor("beta", F32, "T", "HV"),
         _tensor("cu_seqlens", I32, "N1"),
         _tensor("a_free", "operand", "T", "HV", "C", kind="out"), _tensor("l2_gate", F32, "T", "HV", kind="out"),
         _tensor("contracts", F32, "T", "HV", kind="out")),
        shapes.gdn_form, shapes.gdn_forward_program, label_field="heads_per_cta", label_prefix="heads"),
    KernelSpec(
        "gdn_forward", "the fused, warp-specialised forward over chunks with the state in registers",
        "gdn_forward.py.jinja", ForwardConfig, "forward",
        (_tensor("q", "operand", "T", "H", "K"), _tensor("k", "operand", "T", "H", "K"),
         _tensor("v", "operand", "T", "HV", "V"), _tensor("l2_gate", F32, "T", "HV"), _tensor("beta", F32, "T", "HV"),
         _tensor("a_free", "operand", "T", "HV", "C"), _tensor("seq_start", I32, "NS"), _tensor("seq_end", I32, "NE"),
         Param("end_offset", "scalar", I32), Param("zero_start", "scalar", I32),
         _tensor("initial_state", F32, "NI", "HV", "K", "V"), Param("scale", "scalar", F32),
         _tensor("o", "operand", "T", "HV", "V", kind="out"), _tensor("final_row", I32, "N"),
         _tensor("final_state", F32, "NF", "HV", "K", "V", kind="out"),
         _tensor("states", "operand", "S", "HV", "K", "V", kind="out", only_if="store_states"),
         _tensor("state_slot", I32, "N", only_if="store_states"),
         _tensor("trace", "int64", 4, "TC", 8, kind="out", only_if="trace")),
        shapes.gdn_form, shapes.gdn_forward_program, label_field="block_v", label_prefix="bv",
        label_flags=("store_states",)),
    KernelSpec(
        "gdn_backward", "the backward over chunks in reverse with the state gradient in registers: dq, dk per "
        "value head, dv, dβ, dg and the state gradient at each range's start (state_gradient_only: that alone)",
        "gdn_backward.py.jinja", BackwardConfig, "backward",
        (_tensor("q", "operand", "T", "H", "K"), _tensor("k", "operand", "T", "H", "K"),
         _tensor("v", "operand", "T", "HV", "V", unless=ONLY_DS), _tensor("l2_gate", F32, "T", "HV"),
         _tensor("beta", F32, "T", "HV"), _tensor("a_free", "operand", "T", "HV", "C"),
         _tensor("states", "operand", "S", "HV", "K", "V", unless=ONLY_DS),
         _tensor("seq_start", I32, "NS"), _tensor("seq_end", I32, "NE"), Param("end_offset", "scalar", I32),
         _tensor("state_slot", I32, "R", unless=ONLY_DS), _tensor("do", "operand", "T", "HV", "V"),
         Param("has_h0", "scalar", I32, unless=ONLY_DS),
         _tensor("initial_state", F32, "NH", "HV", "K", "V", unless=ONLY_DS), Param("has_dht", "scalar", I32),
         _tensor("dht", F32, "NT", "HV", "K", "V"), Param("scale", "scalar", F32),
         *(_tensor(name, dtype, *shape, kind="out", unless=ONLY_DS) for name, dtype, shape in (
             ("dq_head", "operand", ("T", "HV", "K")), ("dk_head", "operand", ("T", "HV", "K")),
             ("dv", "operand", ("T", "HV", "V")), ("dbeta", F32, ("T", "HV")), ("dg", F32, ("T", "HV")))),
         _tensor("dh0_row", I32, "R"), _tensor("dh0", F32, "NI", "HV", "K", "V", kind="out")),
        shapes.gdn_form, shapes.gdn_backward_program, label_field="roles",
        label_flags=(ONLY_DS,)),
    KernelSpec(
        "cp_plan", "context parallelism: every slot's token range and warm-up window, from l2_gate and contracts",
        "cp_plan.py.jinja", None, None,
        (_tensor("cu_seqlens", I32, "N1"), _tensor("l2_gate", F32, "T", "HV"), _tensor("contracts", F32, "T", "HV"),
         Param("segment_len", "scalar", I32), Param("window_chunks", "scalar", I32), Param("tau2", "scalar", "float64"),
         *(_tensor(name, I32, "P", "N", kind="out") for name in (
             "start", "end", "window_start", "exact", "transition_start", "transition_row", "final_row")))),
    KernelSpec(
        "cp_chain", "context parallelism: every slot's start state, chained in fp32 through the exact transitions",
        "cp_chain.py.jinja", None, None,
        (_tensor("states", F32, "S", "HV", "K", "V", kind="inout"), _tensor("transition", F32, "S", "HV", "K", "K"),
         _tensor("exact", I32, "P", "N"), _tensor("initial_state", F32, "N", "HV", "K", "V")),
        heads_check=_cp_chain_heads),
)}


def spec(name: str) -> KernelSpec:
    """The declaration of kernel ``name``."""
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; gdnc generates {', '.join(KERNELS)}") from None
