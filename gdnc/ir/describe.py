"""Readable text of a recurrence's classification, canonical token form and derived chunked form."""
from __future__ import annotations

from gdnc.ir.canonical import CanonicalForm
from gdnc.ir.symbols import sstr


def describe(form: CanonicalForm) -> str:
    """Several lines: the recurrence, its inputs, axes, token form and chunked form (``gdnc show``)."""
    rec = form.recurrence
    s = sstr
    inputs = rec.signature.text()
    per_k = form.decay_channel == "K"
    decay = {None: f"exp({s(form.log_decay)})", "K": f"diag(exp({s(form.log_decay_vector)}))"
             + ("" if form.log_decay == 0 else f" * exp({s(form.log_decay)})"),
             "V": f"(right) diag(exp({s(form.log_decay_vector)}))"}[form.decay_channel]
    if form.log_decay == 0 and form.decay_channel is None:
        decay = "1"
    d, p, x = s(form.direction), s(form.read_vector), s(form.write_value)
    lines = [
        f"{rec.name}: {rec.description}" if rec.description else rec.name,
        f"  {rec.equation()}",
        f"  inputs: q, k [B, T, H, K]; v [B, T, HV, V]; {inputs}",
        f"  ir hash: {rec.ir_hash}",
        "classification:",
        *(f"  {axis:<10} {value}" for axis, value in form.axes().items()),
        "canonical token form:",
        f"  S_bar = {decay} · S_(t-1)",
    ]
    if form.erase_coef is not None:
        lines.append(f"  u_t   = {x} − ({s(form.erase_coef)}) · S_barᵀ {s(form.erase_key)}")
    else:
        lines.append(f"  u_t   = {x}")
    read_state = "S_(t-1)" if form.read == "before" else "S_t"
    lines += [f"  S_t   = S_bar + {d} u_tᵀ", f"  o_t   = scale · {read_state}ᵀ {p}"]
    if form.decay_channel == "V":
        lines.append("chunked form: not derived for per-V decay (the token form above is exact)")
        return "\n".join(lines)

    log = "the per-K vector" if per_k else "the scalar"
    pair = "Σ_c {a}_ic {b}_jc exp(l_ic − l_jc)" if per_k else "({a}_i · {b}_j) exp(l_i − l_j)"
    lq = "l_(i−1)" if form.read == "before" else "l_i"
    mask = "j < i" if form.read == "before" else "j ≤ i"
    lines += [
        f"chunked form (C tokens a chunk; l = chunk-local cumsum of {log} log decay; S0 = chunk-start state):",
    ]
    if form.erase_coef is not None:
        beta, r = s(form.erase_coef), s(form.erase_key)
        lines += [
            f"  M_ij  = {pair.format(a=r, b=d)},  j < i",
            f"  U     = (I + diag({beta}) M)⁻¹ (X − diag({beta}) (exp(l) ⊙ R) S0),  X_i = {x}, R_i = {r}",
        ]
    else:
        lines.append(f"  U     = X,  X_i = {x}")
    lines += [
        f"  O     = scale · [(exp({lq}) ⊙ P) S0 + Pg U],  Pg_ij = "
        + pair.format(a=p, b=d).replace("l_i", lq).replace("l_ic", lq + "c") + f",  {mask}",
        f"  S_end = exp(l_last) ⊙ S0 + ({d} ⊙ exp(l_last − l))ᵀ U",
        "  every exponent is l_i − l_j with j ≤ i under its mask: ≤ 0 for gates ≤ 0",
    ]
    return "\n".join(lines)
