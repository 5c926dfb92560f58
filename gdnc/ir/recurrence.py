"""A recurrence as the user writes it: a name, the per-token state update and the read."""
from __future__ import annotations

import dataclasses
import hashlib
from functools import cached_property

import sympy as sp

from gdnc.ir.symbols import (
    ChannelVector,
    HeadScalar,
    K,
    KeyVector,
    TokenScalar,
    V,
    input_layout,
    sstr,
)

READS = ("after", "before")


@dataclasses.dataclass(frozen=True)
class Recurrence:
    """One gated linear-attention recurrence, per token and value head.

    update: the new state as an expression of the old one, S' = f(S, q, k, v, inputs)   [K x V]
    output: the read, an expression S.T * r (r a K-vector, usually q); the op multiplies by scale
    read:   "after" (o_t reads S_t, as GDN does) or "before" (o_t reads S_{t-1})
    """

    name: str
    update: sp.MatrixExpr
    output: sp.MatrixExpr
    read: str = "after"
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Recurrence name must be a non-empty str, got {self.name!r}")
        for field, shape in (("update", (K, V)), ("output", (V, 1))):
            expr = getattr(self, field)
            if not isinstance(expr, sp.MatrixExpr):
                raise TypeError(f"Recurrence {field} must be a sympy matrix expression built from "
                                f"gdnc.ir symbols, got {type(expr).__name__}: {expr!r}")
            if tuple(expr.shape) != shape:
                raise ValueError(f"Recurrence {field} has shape {tuple(expr.shape)}; expected {shape} "
                                 f"({'the K x V state' if field == 'update' else 'S.T * q, a V-vector'})")
        if self.read not in READS:
            raise ValueError(f"Recurrence read must be one of {READS}, got {self.read!r}")

    def replace(self, **changes) -> "Recurrence":
        """A new recurrence with some fields changed (e.g. ``gdn.replace(name="mine", update=...)``)."""
        return dataclasses.replace(self, **changes)

    @cached_property
    def inputs(self) -> tuple:
        """The declared inputs (beyond S, q, k, v), sorted by name: the op's keyword arguments."""
        found = set()
        for expr in (self.update, self.output):
            found |= {a for a in expr.atoms(TokenScalar, HeadScalar)}
            found |= {a for a in expr.atoms(sp.MatrixSymbol)
                      if isinstance(a, (ChannelVector, KeyVector)) and a.name not in ("q", "k")}
        return tuple(sorted(found, key=lambda a: a.name))

    @cached_property
    def ir_hash(self) -> str:
        """A short stable hash of the math (not the name): keys caches of derived kernels."""
        # printed forms, not srepr: sympy's elementwise exp carries a Dummy whose index changes per process
        layouts = ",".join(f"{a.name}:{input_layout(a)}" for a in self.inputs)
        text = "|".join((sstr(self.update), sstr(self.output), self.read, layouts))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def equation(self) -> str:
        """The recurrence as text, e.g. ``S_t = exp(g)*(I - beta*k*k.T)*S + beta*k*v.T``."""
        prev = "S_{t-1}" if self.read == "before" else "S_t"
        return f"S_t = {sstr(self.update)}   (S = S_{{t-1}});   o_t = scale * {sstr(self.output).replace('S', prev)}"

    def __str__(self) -> str:
        return f"{self.name}: {self.equation()}"
