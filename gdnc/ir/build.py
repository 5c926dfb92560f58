"""Build the chunk programs of a recurrence from its canonical form.

The forward program is built the way the chunked form reads before any rewrite — FLA's
formulation: the gated inverse A = (I + StrictLower(diag(β) (R Dᵀ ⊙ Γ)))⁻¹, the WY factors
w = A diag(β)(Γ ⊙ R) and u = A X, v_new = u − w Ŝ, and the output and state update from v_new,
with A, w, u, v_new and the chunk-start state h written to HBM between FLA's kernels. The passes
(gdnc.passes) rewrite it. Ops carry roles (A, w, u, v_new, h, ...) that passes and the cost model
read. The state-only program is the forward without the output.
"""
from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction

from gdnc.ir.canonical import CanonicalForm, UnsupportedRecurrence
from gdnc.ir.program import Builder, Program
from gdnc.ir.symbols import ChannelVector, HeadScalar, KeyVector, TokenScalar

STATE = "S"


def chunk_inputs(form: CanonicalForm) -> dict[str, tuple]:
    """Per-chunk input tiles: q, k [C, K]; v [C, V]; scalars [C]; channels [C, K|V]; the state."""
    tiles = {"q": ("C", "K"), "k": ("C", "K"), "v": ("C", "V")}
    for sym in form.recurrence.inputs:
        if isinstance(sym, (TokenScalar, HeadScalar)):
            tiles[sym.name] = ("C",)
        elif isinstance(sym, ChannelVector):
            tiles[sym.name] = ("C", sym.channel)
        else:
            tiles[sym.name] = ("C", "K")
    tiles["scale"] = ()
    tiles[STATE] = ("K", "V")
    return tiles


def build_forward(form: CanonicalForm) -> Program:
    """The forward chunk program: (inputs, S) -> (o, S_new), S carried."""
    if form.decay_channel == "V":
        raise UnsupportedRecurrence(f"{form.recurrence.name}: no chunk program for per-V decay yet")
    p = Program("forward", chunk_inputs(form), [], {}, {})
    b = Builder(p)
    leaves = {name: name for name in p.inputs}
    lower = _Lowering(b, leaves)

    read = lower.vector(form.read_vector, "read", ("C", "K"))
    direction = lower.vector(form.direction, "direction", ("C", "K"))
    write = lower.vector(form.write_value, "write_value", ("C", "V"))
    gates = _Gates(b, lower, form)

    state_bf16 = b.op("cast", STATE, name="S_bf16", role="state_bf16", dtype="bf16")
    h = b.op("hbm", state_bf16, name="h", role="h", dtype="bf16")
    if form.erase_coef is not None:
        erase_key = lower.vector(form.erase_key, "erase_key", ("C", "K"))
        beta = lower.scalar(form.erase_coef, "erase_coef")
        m = gates.pairwise(erase_key, direction, "strict", name="M")
        a = b.op("tri_inverse", b.op("scale_rows", m, beta, name="M_beta"), name="A",
                 role="A" if gates.kind != "none" else "A_free")
        a = b.op("hbm", a, name="A_hbm", role=p.producer()[a].role, dtype="bf16")
        y = b.op("scale_rows", gates.rows(erase_key, gates.gamma, "R_gamma"), beta, name="Y", role="Y")
        w = b.op("hbm", b.op("gemm", a, y, name="w", role="w"), name="w_hbm", role="w", dtype="bf16")
        u = b.op("hbm", b.op("gemm", a, write, name="u", role="u"), name="u_hbm", role="u", dtype="bf16")
        v_new = b.op("sub", u, b.op("gemm", w, h, name="wS"), name="v_new", role="v_new")
    else:
        v_new = write
    v_new_hbm = b.op("hbm", v_new, name="v_new_hbm", role="v_new", dtype="bf16") \
        if form.erase_coef is not None else v_new

    gamma_read = gates.gamma if form.read == "after" else gates.shifted_gamma()
    inter = b.op("gemm", gates.rows(read, gamma_read, "Q_gamma"), h, name="QS")
    intra = b.op("gemm", gates.pairwise(read, direction, "shifted" if form.read == "before" else "inclusive",
                                        name="P"), v_new_hbm, name="PV")
    o = b.op("scale_by", b.op("add", inter, intra, name="o_unscaled"), "scale", name="o", role="o")

    weighted = gates.rows(direction, gates.to_end, "D_r")
    s_new = b.op("add", gates.decay_state(STATE), b.op("gemm", weighted, v_new, ta=True, name="DtV"),
                 name="S_new", role="S_new")
    p.outputs = {"o": o, "S_new": s_new}
    p.carried = {STATE: "S_new"}
    p.verify()
    return p


def build_state_only(form: CanonicalForm) -> Program:
    """The state-only chunk program (for backward recompute and context parallelism)."""
    p = build_forward(form)
    p.name = "state"
    del p.outputs["o"]
    p = p.live()
    if "q" in p.inputs:
        raise UnsupportedRecurrence(f"{form.recurrence.name}: the state update reads q")
    return p


class _Gates:
    """The decay quantities of a chunk for the form's decay kind (none, scalar/head, per-K)."""

    def __init__(self, b: Builder, lower: "_Lowering", form: CanonicalForm):
        self.b = b
        self.kind = "none" if form.decay == "none" else ("K" if form.decay_channel == "K" else "scalar")
        if self.kind == "none":
            self.l = self.gamma = self.to_end = self.gamma_last = None
            return
        log = lower.scalar(form.log_decay, "log_decay") if form.log_decay != 0 else None
        if self.kind == "K":
            log_k = lower.vector(form.log_decay_vector, "log_decay", ("C", "K"))
            if log is not None:
                ones = b.op("const", value=1.0, shape=("C", "K"), name="ones_CK")
                log_k = b.op("add", log_k, b.op("scale_rows", ones, log), name="log_decay_K", role="log_decay")
            log = log_k
        self.l = b.op("cumsum", log, reverse=False, exclusive=False, name="l", role="l")
        self.gamma = b.op("exp", self.l, base="e", name="gamma", role="gamma")
        suffix = b.op("cumsum", log, reverse=True, exclusive=True, name="l_to_end")
        self.to_end = b.op("exp", suffix, base="e", name="r", role="r")
        self.gamma_last = b.op("exp", b.op("total", log, name="l_last"), base="e",
                               name="gamma_last", role="gamma_last")

    def rows(self, x: str, gate: str | None, name: str) -> str:
        """x [C, n] scaled per token by a gate ([C] scalar or [C, K] per-K)."""
        if gate is None:
            return x
        kind = "scale_rows" if self.kind == "scalar" else "mul"
        return self.b.op(kind, x, gate, name=name)

    def shifted_gamma(self) -> str | None:
        if self.kind == "none":
            return None
        return self.b.op("exp", self.b.op("shift", self.l, up=False, name="l_prev"), base="e", name="gamma_prev")

    def pairwise(self, a: str, d: str, mode: str, name: str) -> str:
        """[C, C]: Σ_c a_ic d_jc gate_ijc for the mask mode."""
        b = self.b
        if self.kind == "K":
            return b.op("gated_inner", a, d, self.l, self.l, mode=mode, base="e", name=name + "_gated",
                        role=name + "_gated")
        dot = b.op("gemm", a, d, tb=True, name=name)
        if self.kind == "none":
            return b.op("tril", dot, strict=mode != "inclusive", name=name + "_masked", role=name + "_gated")
        mask = b.op("decay_mask", self.l, mode=mode, base="e", name="G_" + mode, role="decay_mask")
        return b.op("mul", dot, mask, name=name + "_gated", role=name + "_gated")

    def decay_state(self, state: str) -> str:
        if self.kind == "none":
            return state
        kind = "scale_by" if self.kind == "scalar" else "scale_rows"
        return self.b.op(kind, state, self.gamma_last, name="S_decayed", role="state_decayed")


class _Lowering:
    """Lower the canonical form's sympy expressions to elementwise tile ops over the inputs."""

    def __init__(self, b: Builder, leaves: dict[str, str]):
        self.b, self.leaves = b, leaves

    def vector(self, expr, role: str, shape) -> str:
        out = self._vec(expr)
        if self.b.p.shape_of(out) != tuple(shape):
            raise UnsupportedRecurrence(f"{role} {expr} lowers to shape {self.b.p.shape_of(out)}, expected {shape}")
        return self._tag(out, role)

    def scalar(self, expr, role: str) -> str:
        return self._tag(self._sc(expr), role)

    def _tag(self, value: str, role: str) -> str:
        """Give the value a role: the op that made it carries it, or the input is aliased to it."""
        ops = self.b.p.ops
        if ops and ops[-1].out == value and not ops[-1].role:
            ops[-1] = ops[-1].with_(role=role)
            return value
        if value in self.b.p.inputs:
            self.b.p.aliases[role] = value
        return value

    def _vec(self, e) -> str:
        b = self.b
        if isinstance(e, (KeyVector, ChannelVector)) or (isinstance(e, sp.MatrixSymbol) and e.name == "v"):
            return self.leaves[e.name]
        if isinstance(e, sp.Transpose):
            return self._vec(e.arg)
        if isinstance(e, sp.HadamardProduct):
            out = self._vec(e.args[0])
            for a in e.args[1:]:
                out = b.op("mul", out, self._vec(a))
            return out
        if isinstance(e, sp.MatAdd):
            return b.op("sum", *[self._vec(a) for a in e.args]) if len(e.args) > 2 else \
                b.op("add", self._vec(e.args[0]), self._vec(e.args[1]))
        if isinstance(e, sp.MatMul):
            mats = [a for a in e.args if isinstance(a, sp.MatrixExpr)]
            if len(mats) != 1:
                raise UnsupportedRecurrence(f"cannot lower the per-token vector {e}: a product of matrices")
            out = self._vec(mats[0])
            for s in (a for a in e.args if not isinstance(a, sp.MatrixExpr)):
                out = b.op("scale", out, value=float(s)) if s.is_Number else b.op("scale_rows", out, self._sc(s))
            return out
        if isinstance(e, ElementwiseApplyFunction) and e.function.expr.func == sp.exp:
            return b.op("exp", self._vec(e.expr), base="e")
        raise UnsupportedRecurrence(f"cannot lower the per-token vector expression {e} to tile ops")

    def _sc(self, e) -> str:
        b = self.b
        if isinstance(e, (TokenScalar, HeadScalar)):
            return self.leaves[e.name]
        if e.is_Number:
            return b.op("const", value=float(e), shape=("C",))
        if isinstance(e, sp.Add):
            return b.op("sum", *[self._sc(a) for a in e.args]) if len(e.args) > 2 else \
                b.op("add", self._sc(e.args[0]), self._sc(e.args[1]))
        if isinstance(e, sp.Mul):
            nums = [a for a in e.args if a.is_Number]
            rest = [self._sc(a) for a in e.args if not a.is_Number]
            out = rest[0]
            for r in rest[1:]:
                out = b.op("mul", out, r)
            for n in nums:
                out = b.op("scale", out, value=float(n))
            return out
        if isinstance(e, sp.Pow) and e.exp.is_Integer and e.exp > 0:
            base = self._sc(e.base)
            out = base
            for _ in range(int(e.exp) - 1):
                out = b.op("mul", out, base)
            return out
        if isinstance(e, sp.exp):
            return b.op("exp", self._sc(e.args[0]), base="e")
        raise UnsupportedRecurrence(f"cannot lower the per-token scalar expression {e} to tile ops")
