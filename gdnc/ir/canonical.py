"""Normalise a recurrence and classify it along the axes of the family (gdn-math.md §6).

Every recurrence gdnc accepts is brought to one canonical token form:

    S_bar = Λ_t S_{t-1}                    decay: none, scalar, per head, per-K (Λ = diag) or
                                           per-V (S_{t-1} Λ_t); Λ = exp(log_decay), all in log space
    u_t   = x_t − β_t S_barᵀ r_t           x: the written value (e.g. beta*v, or w ⊙ v);
                                           the erase term (β, r) is absent for transition "identity"
    S_t   = S_bar + d_t u_tᵀ               d: the written direction (usually k)
    o_t   = scale · S_{t or t-1}ᵀ p_t      p: the read vector (usually q)

The update is expanded into a sum of products and each product is recognised as a decay term
(c Λ S), an erase term (c d rᵀ Λ S) or a write term (c d xᵀ). Anything else is refused by naming
the term. Note the constraints that make the chunked (WY) form exist: one erase term at most (rank-1
transition), the erase writes along the same direction d as the write term, and it reads the
decayed state S_bar (otherwise its coefficient would carry exp(-g), which overflows).
"""
from __future__ import annotations

import dataclasses

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.diagonal import DiagMatrix

from gdnc.ir.recurrence import Recurrence
from gdnc.ir.symbols import K, S, TokenScalar, V, sstr


class UnsupportedRecurrence(ValueError):
    """The recurrence cannot be brought to the canonical form gdnc derives kernels from."""


@dataclasses.dataclass(frozen=True)
class CanonicalForm:
    """The canonical token form of a recurrence (see module docstring). Expressions are sympy.

    log_decay:        scalar log-space decay (0 when there is none)
    log_decay_vector: per-channel log decay vector expression, or None
    decay_channel:    None, "K" or "V" (where log_decay_vector lives)
    erase_coef:       β, or None for an identity transition
    erase_key:        r (K-vector expression), or None
    direction:        d (K-vector expression)
    write_value:      x (V-vector expression, coefficient included)
    read_vector:      p (K-vector expression)
    """

    recurrence: Recurrence
    log_decay: sp.Expr
    log_decay_vector: sp.MatrixExpr | None
    decay_channel: str | None
    erase_coef: sp.Expr | None
    erase_key: sp.MatrixExpr | None
    direction: sp.MatrixExpr
    write_value: sp.MatrixExpr
    read_vector: sp.MatrixExpr

    @property
    def decay(self) -> str:
        """none | head (constant per head) | scalar | per-K | per-V."""
        if self.decay_channel is not None:
            return f"per-{self.decay_channel}"
        if self.log_decay == 0:
            return "none"
        if self.log_decay.atoms(TokenScalar):
            return "scalar"
        return "head"

    @property
    def transition(self) -> str:
        """identity | rank-1 (same key) | rank-1 (other key)."""
        if self.erase_coef is None:
            return "identity"
        return "rank-1 (same key)" if self.erase_key == self.direction else "rank-1 (other key)"

    @property
    def read(self) -> str:
        return self.recurrence.read

    @property
    def write(self) -> str:
        return f"{sstr(self.direction)} * ({sstr(self.write_value)}).T"

    def axes(self) -> dict:
        """The classification as plain strings (for printing and JSON)."""
        return {"decay": self.decay, "transition": self.transition, "write": self.write,
                "read": self.read}


def classify(rec: Recurrence) -> CanonicalForm:
    """Bring ``rec`` to its canonical form, or raise UnsupportedRecurrence naming the term."""
    decay_terms, erase_terms, write_terms = [], [], []
    for term in _sum_terms(sp.expand(rec.update)):
        coef, factors = _product(term)
        n_state = sum(1 for f in factors if f == S)
        if n_state > 1 or any(f != S and S in f.atoms(sp.MatrixSymbol) for f in factors):
            raise UnsupportedRecurrence(
                f"{rec.name}: term {sstr(term)} is not linear in the state S; each term must be "
                "c*S, c*diag(exp(a))*S, c*k*r.T*S (erase) or c*k*x.T (write)")
        if n_state == 0:
            write_terms.append((term, coef, factors))
        elif len(factors) in (1, 2):
            decay_terms.append((term, coef, factors))
        else:
            erase_terms.append((term, coef, factors))

    if len(decay_terms) != 1:
        what = "no term c*S keeps the state" if not decay_terms else \
            "several decay terms " + ", ".join(sstr(t) for t, _, _ in decay_terms)
        raise UnsupportedRecurrence(
            f"{rec.name}: {what}; expected exactly one decay term c*S, c*diag(exp(a))*S or "
            "c*S*diag(exp(w)) with c = 1 or exp(log_gate)")
    decay_term, decay_coef, decay_factors = decay_terms[0]
    log_decay = _log_of(rec, decay_coef, decay_term)
    channel_factor, log_vector, channel = _decay_matrix(rec, decay_factors, decay_term)

    # the transition before the write: a rank-2 one (a two-step DeltaProduct) also has several write
    # terms, and its rank is what the chunked form cannot take
    if len(erase_terms) > 1:
        raise UnsupportedRecurrence(
            f"{rec.name}: the transition has rank > 1 ({len(erase_terms)} erase terms: "
            + ", ".join(sstr(t) for t, _, _ in erase_terms) + "); a rank-2 or higher transition "
            "(DeltaProduct, DPLR) is not supported; expected one erase term -beta*k*r.T*S")
    if len(write_terms) != 1:
        what = "no write term" if not write_terms else \
            "several write terms " + ", ".join(sstr(t) for t, _, _ in write_terms)
        raise UnsupportedRecurrence(
            f"{rec.name}: {what}; expected exactly one write term c*k*x.T (x a V-vector such as v)")
    write_term, write_coef, write_factors = write_terms[0]
    if len(write_factors) != 2 or write_factors[0].shape != (K, 1) or write_factors[1].shape != (1, V):
        raise UnsupportedRecurrence(
            f"{rec.name}: write term {sstr(write_term)} is not of the form c*d*x.T with d a "
            "K-vector and x a V-vector")
    direction = write_factors[0]
    write_value = sp.MatMul(write_coef, write_factors[1].T).doit() if write_coef != 1 \
        else write_factors[1].T.doit()

    erase_coef = erase_key = None
    if erase_terms:
        erase_coef, erase_key = _erase(rec, erase_terms[0], direction, decay_coef, channel_factor,
                                       channel, log_decay)

    read_vector = _read_vector(rec)
    return CanonicalForm(rec, log_decay, log_vector, channel, erase_coef, erase_key, direction,
                         write_value, read_vector)


def _sum_terms(expr):
    return list(expr.args) if isinstance(expr, sp.MatAdd) else [expr]


def _product(term):
    """Split a product into (scalar coefficient, list of matrix factors in order)."""
    coef, factors = sp.S.One, []
    for arg in (term.args if isinstance(term, sp.MatMul) else (term,)):
        if isinstance(arg, sp.MatrixExpr):
            factors.append(arg)
        else:
            coef *= arg
    return coef, factors


def _log_of(rec, coef, term):
    """log(coef) in closed form, which must be free of log() (gates are written as exp(log_gate))."""
    log_c = sp.simplify(sp.expand_log(sp.log(coef), force=True))
    if log_c.has(sp.log) or not log_c.is_real:
        raise UnsupportedRecurrence(
            f"{rec.name}: decay coefficient {sstr(coef)} in {sstr(term)} is not written in log "
            "space; write the decay as exp(g) with g <= 0 an Input")
    if log_c.is_positive:
        raise UnsupportedRecurrence(
            f"{rec.name}: decay coefficient {sstr(coef)} in {sstr(term)} grows the state (its log, "
            f"{sstr(log_c)}, is > 0); a decay must be exp(g) with g <= 0")
    return log_c


def _decay_matrix(rec, factors, term):
    """The per-channel decay factor of the decay term: (factor, log vector, channel) or Nones."""
    if factors == [S]:
        return None, None, None
    diag_factor = factors[0] if factors[1] == S else factors[1]
    channel = "K" if factors[1] == S else "V"
    if not (isinstance(diag_factor, DiagMatrix) and isinstance(diag_factor.args[0], ElementwiseApplyFunction)
            and diag_factor.args[0].function(sp.Symbol("x")) == sp.exp(sp.Symbol("x"))):
        raise UnsupportedRecurrence(
            f"{rec.name}: decay term {sstr(term)}: a per-channel decay must be written "
            "diag(exp(a))*S (per-K) or S*diag(exp(w)) (per-V), with a, w log-space Inputs")
    return diag_factor, diag_factor.args[0].expr, channel


def _erase(rec, erase, direction, decay_coef, channel_factor, channel, log_decay):
    """Recognise c*d*r.T*Λ*S: returns (β, r) with β = -c / decay coefficient."""
    term, coef, factors = erase
    expected = [direction, None, S] if channel_factor is None else \
        ([direction, None, channel_factor, S] if channel == "K" else [direction, None, S, channel_factor])
    ok = len(factors) == len(expected) and factors[1].shape == (1, K) and all(
        e is None or f == e for f, e in zip(factors, expected))
    if not ok:
        if factors[0] != direction:
            reason = (f"its leftmost factor is {sstr(factors[0])} but the write is along "
                      f"{sstr(direction)}; the chunked (WY) form needs the erase along the written key "
                      "(decay first: (I - beta*k*r.T)*diag(exp(a))*S)")
        else:
            reason = "it must act on the decayed state: write the update as decay*(I - beta*k*r.T)*S + write"
        raise UnsupportedRecurrence(f"{rec.name}: erase term {sstr(term)} is not supported: {reason}")
    beta = sp.simplify(-coef / decay_coef)
    if beta.free_symbols & log_decay.free_symbols:
        raise UnsupportedRecurrence(
            f"{rec.name}: erase term {sstr(term)} reads the state before its decay (its coefficient "
            f"relative to the decay is {sstr(beta)}, which would need exp(-g)); write the update as "
            "decay*(I - beta*k*r.T)*S + write")
    return beta, factors[1].T.doit()


def _read_vector(rec):
    """The read must be S.T * p for a K-vector expression p."""
    out = rec.output
    coef, factors = _product(out)
    if coef == 1 and len(factors) == 2 and factors[0] == S.T and factors[1].shape == (K, 1) \
            and S not in factors[1].atoms(sp.MatrixSymbol):
        return factors[1]
    raise UnsupportedRecurrence(
        f"{rec.name}: output {sstr(out)} is not supported; expected S.T*q (the scale is an "
        "argument of the op)")

