"""The vocabulary a recurrence is written in: the state, the token vectors, declared inputs.

A recurrence is a sympy matrix expression over these objects, read per token and per value head:

    S        the state, K x V (loop-carried)
    q, k     K-vectors of the token (q/k heads; GVA maps value head i to q/k head i // G)
    v        the token's V-vector
    I        the K x K identity
    Input    a declared per-token input: a scalar per (token, head) like g or beta, a scalar per
             head (constant over tokens), or a per-channel vector over K or V
    Key      an extra K-vector per token and q/k head (e.g. Comba's erase key p)

Gates are written in log space and enter through exp: ``exp(g) * S`` or ``diag(exp(a)) * S``.
Each input kind is its own sympy class, so an expression carries what each leaf is and gdnc can
derive tensor layouts from the expression alone.
"""
from __future__ import annotations

import sympy as sp
from sympy import HadamardProduct, Identity, MatrixSymbol
from sympy.matrices.expressions.diagonal import DiagMatrix
from sympy.printing.str import StrPrinter

from gdnc.ir.signature import InputSpec

K = sp.Symbol("K", integer=True, positive=True)
V = sp.Symbol("V", integer=True, positive=True)

TOKEN, HEAD = "token", "head"
CHANNELS = ("K", "V")


class TokenScalar(sp.Symbol):
    """A scalar per (token, value head): layout [B, T, HV]."""

    kind = "token scalar"


class HeadScalar(sp.Symbol):
    """A scalar per value head, constant over tokens: layout [HV]."""

    kind = "head scalar"


class ChannelVector(MatrixSymbol):
    """A per-channel vector per (token, value head): [B, T, HV, K] or [B, T, HV, V]."""

    kind = "channel vector"

    @property
    def channel(self) -> str:
        return "K" if self.shape[0] == K else "V"


class KeyVector(MatrixSymbol):
    """A K-vector per (token, q/k head): [B, T, H, K] (q, k, and extra keys such as Comba's p)."""

    kind = "key"


class ValueVector(MatrixSymbol):
    """The token's V-vector per value head: [B, T, HV, V]."""

    kind = "value"


class StateMatrix(MatrixSymbol):
    """The K x V state of one value head."""

    kind = "state"


S = StateMatrix("S", K, V)
q = KeyVector("q", K, 1)
k = KeyVector("k", K, 1)
v = ValueVector("v", V, 1)
I = Identity(K)

BUILTIN_NAMES = frozenset({"S", "q", "k", "v"})


def Input(name: str, per: str = TOKEN, channel: str | None = None):
    """Declare an input of a recurrence.

    per: "token" (default; a value per token and value head) or "head" (one value per value head).
    channel: None for a scalar, "K" or "V" for a per-channel vector (per token only).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Input name must be a Python identifier, got {name!r}")
    if name in BUILTIN_NAMES or name in ("scale", "initial_state", "cu_seqlens"):
        raise ValueError(f"Input name {name!r} is reserved (S, q, k, v and the op's own arguments)")
    if per not in (TOKEN, HEAD):
        raise ValueError(f"Input per= must be 'token' or 'head', got {per!r}")
    if channel is None:
        return (TokenScalar if per == TOKEN else HeadScalar)(name, real=True)
    if channel not in CHANNELS:
        raise ValueError(f"Input channel= must be None, 'K' or 'V', got {channel!r}")
    if per != TOKEN:
        raise ValueError(f"Input {name!r}: a per-channel input is per token; per='head' is not supported")
    return ChannelVector(name, K if channel == "K" else V, 1)


def Key(name: str) -> KeyVector:
    """Declare an extra K-vector input per token and q/k head (laid out like k)."""
    if not isinstance(name, str) or not name.isidentifier() or name in BUILTIN_NAMES:
        raise ValueError(f"Key name must be a new Python identifier, got {name!r}")
    return KeyVector(name, K, 1)


def exp(x):
    """exp of a scalar, or the elementwise exp of a channel vector."""
    if isinstance(x, sp.MatrixExpr):
        return x.applyfunc(sp.exp)
    return sp.exp(x)


def diag(x: sp.MatrixExpr) -> DiagMatrix:
    """The diagonal matrix of a vector expression (K or V long)."""
    if not isinstance(x, sp.MatrixExpr) or x.shape[1] != 1:
        raise TypeError(f"diag() takes a vector expression, got {x!r}")
    return DiagMatrix(x)


def hadamard(a: sp.MatrixExpr, b: sp.MatrixExpr) -> HadamardProduct:
    """The elementwise product a ⊙ b of two vectors of the same length."""
    return HadamardProduct(a, b)


def input_spec(sym, log_gate: bool = False) -> InputSpec:
    """The plain-data declaration of an input symbol (its layout follows from its kind)."""
    if isinstance(sym, TokenScalar):
        return InputSpec(sym.name, "token", log_gate=log_gate)
    if isinstance(sym, HeadScalar):
        return InputSpec(sym.name, "head", log_gate=log_gate)
    if isinstance(sym, ChannelVector):
        return InputSpec(sym.name, "channel", sym.channel, log_gate=log_gate)
    return InputSpec(sym.name, "key", log_gate=log_gate)


class _Printer(StrPrinter):
    """sympy's str printer, with gdnc's spelling of per-channel gates and products."""

    def _print_DiagMatrix(self, expr):
        return f"diag({self._print(expr.args[0])})"

    def _print_ElementwiseApplyFunction(self, expr):
        return f"{expr.function.expr.func.__name__}({self._print(expr.expr)})"

    def _print_HadamardProduct(self, expr):
        return f"hadamard({', '.join(self._print(a) for a in expr.args)})"


def sstr(expr) -> str:
    """An IR expression as the user would write it (``diag(exp(a))`` rather than sympy's internals)."""
    return _Printer().doprint(expr)
