"""Who chooses a call's plan: a policy object, passed to the op (``policy=``), the tests and the
benchmarks instead of module settings, so that a choice reaches worker processes with the call.

A policy answers two questions: the plan of one call (``plan``), and every (kernel, config) its
plans may use for a head configuration (``candidates``: what ``gdnc build`` compiles ahead of time,
so that no call compiles). Today's policy is the hand heuristic of gdnc.runtime.plan; an autotuned
table will be another.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from gdnc.emit.config import LOCAL_STATE_GRADIENT, BackwardConfig, ForwardConfig, Heads, PrepareConfig
from gdnc.runtime.plan import Layout, Plan, Split, SplitConfig, forward_widths, layout_forward, prepare_heads_per_cta


@dataclasses.dataclass(frozen=True)
class Call:
    """What the host knows of a call without reading the device."""

    heads: Heads
    tokens: int
    num_sequences: int
    sm_count: int


class Policy(Protocol):
    def plan(self, call: Call) -> Plan:
        """The plan of ``call``."""

    def candidates(self, heads: Heads) -> list[tuple[str, Any]]:
        """Every (kernel name, config) the plans of calls with ``heads`` may use."""


@dataclasses.dataclass(frozen=True)
class HeuristicPolicy:
    """The hand heuristic: gdnc.runtime.plan's layout (V block and split) and gdn_prepare's value
    heads a CTA, the other fields at their configs' defaults.

    split:   the heuristic's split knobs (SplitConfig; segment_len=0 never splits, N always in N tokens)
    forward: ForwardConfig fields fixed over the heuristic's choice (block_v, m_role, ...)
    prepare: PrepareConfig fields fixed likewise (heads_per_cta, inverse, order, ...)
    backward: BackwardConfig fields (roles, registers) of the backward over every range
    """

    split: SplitConfig = SplitConfig()
    forward: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prepare: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backward: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.split.check()
        for name, fields, config in (("forward", self.forward, ForwardConfig), ("prepare", self.prepare, PrepareConfig),
                                     ("backward", self.backward, BackwardConfig)):
            unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(config)})
            if unknown:
                raise ValueError(f"HeuristicPolicy.{name}: {unknown} are not {config.__name__} fields")

    def _widths(self, heads: Heads) -> tuple[int, ...]:
        return (self.forward["block_v"],) if "block_v" in self.forward else forward_widths(heads.v_dim)

    def _prepare(self, heads_per_cta: int) -> PrepareConfig:
        return PrepareConfig(**{"heads_per_cta": heads_per_cta, **self.prepare})

    def plan(self, call: Call) -> Plan:
        heads = call.heads
        layout = layout_forward(call.tokens, call.num_sequences, heads.h_v, call.sm_count, heads.v_dim,
                                self._widths(heads), self.split)
        resident = call.sm_count * self._prepare(1).ctas_per_sm
        heads_per_cta = prepare_heads_per_cta(call.tokens, call.num_sequences, heads.h_qk, heads.group, resident)
        # the backward's states pass: the narrowest block that fills one wave unsplit
        unsplit = layout_forward(call.tokens, call.num_sequences, heads.h_v, call.sm_count, heads.v_dim,
                                 self._widths(heads), dataclasses.replace(self.split, segment_len=0))
        # the backward runs one CTA a value head and range: the forward's layout rule at one block of V
        backward = layout_forward(call.tokens, call.num_sequences, heads.h_v, call.sm_count, heads.v_dim,
                                  (heads.v_dim,), self.split)
        return Plan(ForwardConfig(**{**self.forward, "block_v": layout.block_v}), self._prepare(heads_per_cta),
                    self._split(layout), states=self._states(unsplit.block_v), backward=BackwardConfig(**self.backward),
                    backward_split=self._split(backward))

    def _split(self, layout: Layout) -> Split | None:
        """The split of a layout (None where it does not split), with the heuristic's shortcut knobs."""
        if not layout.segment_len:
            return None
        return Split(layout.segment_len, layout.slots, self.split.tau, self.split.max_warmup_chunks)

    def _states(self, width: int) -> ForwardConfig:
        return ForwardConfig(**{**self.forward, "block_v": width, "store_states": True})

    def candidates(self, heads: Heads) -> list[tuple[str, Any]]:
        prepares = dict.fromkeys([self._prepare(1), self._prepare(heads.group)])
        widths = self._widths(heads)
        # the backward where its kernel takes these heads (the op runs K = V = 128 only)
        backward = BackwardConfig(**self.backward)
        trains = _takes(backward, heads)
        return ([("gdn_forward", ForwardConfig(**{**self.forward, "block_v": width})) for width in widths]
                + [("gdn_prepare", config) for config in prepares] + [("cp_plan", None), ("cp_chain", None)]
                + ([("gdn_forward", self._states(width)) for width in widths] + [("gdn_backward", backward)]
                   + [("gdn_backward", LOCAL_STATE_GRADIENT)] if trains else []))


def _takes(config, heads: Heads) -> bool:
    """Whether a kernel built with ``config`` takes ``heads`` (its check passes)."""
    try:
        config.check(heads)
    except ValueError:
        return False
    return True


DEFAULT_POLICY = HeuristicPolicy()
