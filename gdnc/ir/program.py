"""The chunk program: the per-chunk computation of one value head as a dataflow of typed tile ops.

A program is a list of ops in SSA form. Every value is a tile whose shape is written with the
symbolic dims C (tokens in the chunk), K and V, or () for a per-chunk scalar. Values of shape
[C] are per-token scalars (g, beta), [C, K] per-token K-vectors, [K, V] states. Inputs are loaded
per chunk; ``carried`` names the loop-carried state (input name -> output value of the next chunk).

Op kinds (args; attrs) -> shape:
    const        (; value, shape)                 a constant tile
    gemm         (a, b; ta, tb, dtype)            op(a) @ op(b), operands in dtype, fp32 accumulation
    add, sub, mul (a, b)                          elementwise, same shape
    sum          (a, b, ...)                      elementwise sum of several tiles (gradient accumulation)
    neg          (a)
    scale        (a; value)                       a * constant
    scale_rows   (x, s)                           x [M, N] * s [M] per row
    scale_cols   (x, s)                           x [M, N] * s [N] per column
    scale_by     (x, s)                           x * s for a per-chunk scalar s ()
    exp          (x; base)                        base ** x, base "e" or "2"
    cumsum       (x; reverse, exclusive)          chunk-local (inclusive/exclusive) prefix or suffix
                                                  sums along tokens
    total        (x)                              sum over the chunk's tokens ([C] -> (), [C,K] -> [K])
    fill         (s; like)                        broadcast a total's gradient back over tokens
    shift        (x; up)                          y_i = x_(i-1) (down, y_0 = 0) or x_(i+1) (up)
    decay_mask   (l; mode, base)                  [C, C] G_ij = base^(l_i - l_j) (scalar gates)
    gated_inner  (a, b, la, lb; mode, base)       [C, C] Σ_c a_ic b_jc base^(la_ic - lb_jc) (per-K gates)
    gated_inner_grad (dy, a, b, la, lb; mode, base, wrt)   the VJP of gated_inner w.r.t. one argument
    decay_mask_grad  (dG, G; mode)                the VJP of decay_mask: the gradient of l
    tri_inverse  (m)                              (I + StrictLower(m))^-1, unit lower triangular
    tril         (x; strict)                      lower triangle (strict: below the diagonal)
    rowsum, colsum (x)                            [M, N] -> [M] / [N]
    sum_all      (x)                              -> ()
    cast         (x; dtype)                       a snapshot in a narrower dtype (e.g. bf16 state)
    hbm          (x; dtype)                       x written to HBM and read back by a later kernel

Masks (mode): "inclusive" j <= i with exactly 1 on the diagonal; "strict" j < i; "shifted" j < i
with exponent l_(i-1) - l_j and exactly 1 at j = i - 1 (a read before the update). Exponents that
are identically zero are constants, so no opposite O(1) gradients flow into l only to cancel.
"""
from __future__ import annotations

import dataclasses
from typing import Any

Shape = tuple[str, ...]
CHUNK_SIZE = 64  # tokens one chunk program covers: the chunked form's default and every kernel's chunk
MASK_MODES = ("inclusive", "strict", "shifted")
PAIR_GATES = frozenset({"decay_mask", "gated_inner", "gated_inner_grad"})  # exponentiate l_i − l_j
EXPONENTIALS = PAIR_GATES | {"exp"}


@dataclasses.dataclass(frozen=True)
class Op:
    out: str
    kind: str
    args: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...]
    shape: Shape
    role: str = ""  # what the value is in the math (A, w, u, v_new, o, ...), kept through rewrites

    def attr(self, key, default=None):
        return dict(self.attrs).get(key, default)

    def with_(self, **changes) -> "Op":
        if "attrs" in changes and isinstance(changes["attrs"], dict):
            changes["attrs"] = tuple(sorted(changes["attrs"].items()))
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        attrs = ", ".join(f"{k}={v}" for k, v in self.attrs)
        args = ", ".join(self.args)
        role = f"  # {self.role}" if self.role else ""
        shape = "[" + ", ".join(self.shape) + "]"
        return f"{self.out:<14} {shape:<8} = {self.kind}({args}{'; ' + attrs if attrs else ''}){role}"


@dataclasses.dataclass
class Program:
    """One per-chunk program (forward, state-only or backward) of a recurrence."""

    name: str
    inputs: dict[str, Shape]
    ops: list[Op]
    outputs: dict[str, str]          # output name -> value
    carried: dict[str, str]          # carried input name -> output name that feeds the next chunk
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)  # role -> input that plays it
    log: list[str] = dataclasses.field(default_factory=list)  # what each pass did, or why it did not

    def copy(self) -> "Program":
        return dataclasses.replace(self, inputs=dict(self.inputs), ops=list(self.ops),
                                   outputs=dict(self.outputs), carried=dict(self.carried),
                                   aliases=dict(self.aliases), log=list(self.log))

    def value_of(self, role: str) -> str | None:
        """The value that plays ``role`` (the last op with it, or an input aliased to it), or None."""
        for op in reversed(self.ops):
            if op.role == role:
                return op.out
        return self.aliases.get(role)

    def live(self) -> "Program":
        """A copy without the ops whose values reach no output (and without unused inputs)."""
        needed = set(self.outputs.values())
        for op in reversed(self.ops):
            if op.out in needed:
                needed.update(op.args)
        q = self.copy()
        q.ops = [op for op in self.ops if op.out in needed]
        q.inputs = {n: s for n, s in self.inputs.items() if n in needed or n in self.carried}
        q.aliases = {r: v for r, v in self.aliases.items() if v in q.inputs}
        return q

    def index_of(self, value: str) -> int:
        return next(i for i, op in enumerate(self.ops) if op.out == value)

    def producer(self) -> dict[str, Op]:
        return {op.out: op for op in self.ops}

    def users(self) -> dict[str, list[Op]]:
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            for a in op.args:
                out.setdefault(a, []).append(op)
        return out

    def shape_of(self, value: str) -> Shape:
        if value in self.inputs:
            return self.inputs[value]
        return self.producer()[value].shape

    def replace_uses(self, old: str, new: str) -> None:
        """Point every use of ``old`` (ops and outputs) at ``new``."""
        self.ops = [op.with_(args=tuple(new if a == old else a for a in op.args)) for op in self.ops]
        self.outputs = {k: (new if v == old else v) for k, v in self.outputs.items()}

    def fresh(self, base: str) -> str:
        taken = set(self.inputs) | {op.out for op in self.ops}
        if base not in taken:
            return base
        i = 2
        while f"{base}_{i}" in taken:
            i += 1
        return f"{base}_{i}"

    def verify(self) -> None:
        """Every arg defined before use, every name defined once, outputs defined."""
        defined = set(self.inputs)
        for op in self.ops:
            missing = [a for a in op.args if a not in defined]
            if missing:
                raise ValueError(f"{self.name}: {op.out} uses undefined {missing}")
            if op.out in defined:
                raise ValueError(f"{self.name}: {op.out} defined twice")
            defined.add(op.out)
        for name, value in self.outputs.items():
            if value not in defined:
                raise ValueError(f"{self.name}: output {name} = {value} is not defined")

    def __str__(self) -> str:
        ins = ", ".join(f"{n} [{', '.join(s)}]" for n, s in self.inputs.items())
        outs = ", ".join(f"{n} = {v}" for n, v in self.outputs.items())
        lines = [f"program {self.name}({ins})"] + ["  " + str(op) for op in self.ops]
        lines.append(f"  return {outs}" + (f"; carried {self.carried}" if self.carried else ""))
        return "\n".join(lines)


class Builder:
    """Adds ops to a program (at the end, or from position ``at`` on), inferring shapes; returns
    value names."""

    def __init__(self, program: Program, at: int | None = None):
        self.p = program
        self.at = at

    def op(self, kind: str, *args: str, name: str | None = None, role: str = "", **attrs) -> str:
        shape = infer_shape(kind, [self.p.shape_of(a) for a in args], attrs)
        out = self.p.fresh(name or kind)
        new = Op(out, kind, tuple(args), tuple(sorted(attrs.items())), shape, role)
        if self.at is None:
            self.p.ops.append(new)
        else:
            self.p.ops.insert(self.at, new)
            self.at += 1
        return out


def infer_shape(kind: str, shapes: list[Shape], attrs: dict) -> Shape:
    """The result shape of an op, checking its operands."""
    def need(cond, what):
        if not cond:
            raise ValueError(f"{kind}: {what} (operand shapes {shapes}, attrs {attrs})")

    if kind == "const":
        return tuple(attrs["shape"])
    if kind == "gemm":
        a, b = shapes
        need(len(a) == 2 and len(b) == 2, "operands must be 2-D")
        m, ka = (a[1], a[0]) if attrs.get("ta") else a
        kb, n = (b[1], b[0]) if attrs.get("tb") else b
        need(ka == kb, f"inner dims differ: {ka} vs {kb}")
        return (m, n)
    if kind in ("add", "sub", "mul", "sum"):
        need(all(s == shapes[0] for s in shapes), "operands must have one shape")
        return shapes[0]
    if kind in ("neg", "scale", "exp", "cast", "hbm", "tril", "shift", "cumsum"):
        return shapes[0]
    if kind == "scale_rows":
        need(len(shapes[0]) == 2 and shapes[1] == shapes[0][:1], "needs x [M, N] and s [M]")
        return shapes[0]
    if kind == "scale_cols":
        need(len(shapes[0]) == 2 and shapes[1] == shapes[0][1:], "needs x [M, N] and s [N]")
        return shapes[0]
    if kind == "scale_by":
        need(shapes[1] == (), "needs a per-chunk scalar s ()")
        return shapes[0]
    if kind == "total":
        return shapes[0][1:]
    if kind == "fill":
        return tuple(attrs["like"])
    if kind in ("decay_mask", "gated_inner", "tri_inverse"):
        return ("C", "C")
    if kind == "gated_inner_grad":
        return shapes[{"a": 1, "b": 2, "la": 3, "lb": 4}[attrs["wrt"]]]
    if kind == "decay_mask_grad":
        return ("C",)
    if kind == "rowsum":
        return shapes[0][:1]
    if kind == "colsum":
        return shapes[0][1:]
    if kind == "sum_all":
        return ()
    raise ValueError(f"unknown op kind {kind!r}")
