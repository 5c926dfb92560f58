"""A recurrence as the user writes it: a name, the per-token state update and the read."""
from __future__ import annotations

import dataclasses
import hashlib
from functools import cached_property

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from gdnc.ir.signature import Signature
from gdnc.ir.symbols import (
    ChannelVector,
    HeadScalar,
    K,
    KeyVector,
    TokenScalar,
    V,
    input_spec,
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
            _check_shapes(field, expr)
            if tuple(expr.shape) != shape:
                raise ValueError(f"Recurrence {field} has shape {tuple(expr.shape)}; expected {shape} "
                                 f"({'the K x V state' if field == 'update' else 'S.T * q, a V-vector'})")
        if self.read not in READS:
            raise ValueError(f"Recurrence read must be one of {READS}, got {self.read!r}")

    def replace(self, **changes) -> "Recurrence":
        """A new recurrence with some fields changed (e.g. ``gdn.replace(name="mine", update=...)``).
        Where the math changes and no description is given, the old one no longer applies: the new
        one says what it was altered from."""
        math_changed = any(f in changes for f in ("update", "output", "read"))
        if math_changed and "description" not in changes:
            changes["description"] = f"altered from {self.name}"
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
        layouts = ",".join(f"{a.name}:{input_spec(a).layout}" for a in self.inputs)
        text = "|".join((sstr(self.update), sstr(self.output), self.read, layouts))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @cached_property
    def signature(self) -> Signature:
        """The call's inputs as plain data (gdnc.ir.signature): layouts, and which are log-space gates
        (read only as exp(x): the update grows the state unless x <= 0)."""
        gates = set()
        for node in sp.preorder_traversal(self.update):
            if isinstance(node, sp.exp) and isinstance(node.args[0], (TokenScalar, HeadScalar)):
                gates.add(node.args[0].name)
            elif isinstance(node, ElementwiseApplyFunction) and isinstance(node.expr, ChannelVector) \
                    and node.function(sp.Symbol("x")) == sp.exp(sp.Symbol("x")):
                gates.add(node.expr.name)
        return Signature(self.name, self.ir_hash, tuple(input_spec(a, a.name in gates) for a in self.inputs))

    def equation(self) -> str:
        """The recurrence as text, e.g. ``S_t = exp(g)*(I - beta*k*k.T)*S + beta*k*v.T``."""
        prev = "S_{t-1}" if self.read == "before" else "S_t"
        return f"S_t = {sstr(self.update)}   (S = S_{{t-1}});   o_t = scale * {sstr(self.output).replace('S', prev)}"

    def __str__(self) -> str:
        return f"{self.name}: {self.equation()}"


def _check_shapes(field: str, expr: sp.MatrixExpr) -> None:
    """Every product and sum inside ``expr`` has matching sizes (sympy does not check symbolic K
    and V): a mistyped ``k * v`` for ``k * v.T`` is refused here, naming the term."""
    for node in sp.postorder_traversal(expr):  # innermost first: the product that is wrong, not its sum
        if isinstance(node, sp.MatMul):
            factors = [a for a in node.args if isinstance(a, sp.MatrixExpr)]
            for left, right in zip(factors, factors[1:]):
                if left.shape[1] != right.shape[0]:
                    raise ValueError(
                        f"Recurrence {field}: in {sstr(node)}, {sstr(left)} ({_size(left)}) times {sstr(right)} "
                        f"({_size(right)}) does not multiply: {left.shape[1]} columns against {right.shape[0]} "
                        "rows (a missing .T?)")
        elif isinstance(node, (sp.MatAdd, sp.HadamardProduct)):
            terms = [a for a in node.args if isinstance(a, sp.MatrixExpr)]
            if len({a.shape for a in terms}) > 1:
                sizes = ", ".join(f"{sstr(a)} ({_size(a)})" for a in terms)
                raise ValueError(f"Recurrence {field}: the terms of {sstr(node)} differ in size: {sizes}")


def _size(expr) -> str:
    return f"{expr.shape[0]}x{expr.shape[1]}"
