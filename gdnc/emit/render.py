"""Render TileLang kernel sources from a recurrence's rewritten chunk programs and a config.

A template implements one shape of rewritten program. The emitter checks that the compiled
forward program is that shape (the rewrites it relies on were applied, nothing else crosses HBM)
before it fills the template, and writes the equation, the config, the IR hash and the program
itself into the header of the generated file.
"""
from __future__ import annotations

import jinja2

import gdnc
from gdnc.emit.config import ForwardConfig, Heads, PrepareConfig, describe
from gdnc.ir.classify import CanonicalForm, UnsupportedRecurrence, classify
from gdnc.ir.recurrence import Recurrence
from gdnc.ir.symbols import sstr
from gdnc.passes import Compiled, compile_programs
from gdnc.plan import MAX_WARMUP_CHUNKS

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("gdnc", "templates"), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True)

KERNELS = {
    "gdn_prepare": "per chunk, the gate-free inverse (K Kᵀ, then substitution and block merges), the log2 gate cumsum and whether every transition contracts",
    "gdn_forward": "the fused, warp-specialised forward over chunks with the state in registers",
    "cp_plan": "context parallelism: every slot's token range and warm-up window, from l2_gate and contracts",
    "cp_chain": "context parallelism: every slot's start state, chained in fp32 through the exact transitions",
}


def check_gdn_shape(form: CanonicalForm, compiled: Compiled) -> None:
    """Refuse, with the reason, a recurrence whose rewritten forward is not what gdn_* implement."""
    axes = form.axes()
    wanted = {"decay": "scalar", "transition": "rank-1 (same key)", "read": "after"}
    mismatched = {a: axes[a] for a, v in wanted.items() if axes[a] != v}
    if mismatched or sstr(form.write_value) != "beta*v" or sstr(form.erase_coef) != "beta" \
            or sstr(form.read_vector) != "q" or sstr(form.direction) != "k" or sstr(form.log_decay) != "g":
        raise UnsupportedRecurrence(
            f"{form.recurrence.name}: no kernel template yet for {axes} (write {sstr(form.write_value)}); "
            "the gdn templates need the decay exp(g), the erase beta*k*k.T, the write beta*v and "
            "o = S.T*q after the update. Use gdnc.reference for this recurrence.")
    fwd = compiled.forward.live()
    kinds = [op.kind for op in fwd.ops]
    spilled = sorted({op.role for op in fwd.ops if op.kind == "hbm"})
    problems = []
    if spilled != ["A_free"]:
        problems.append(f"HBM hand-offs {spilled}, expected only A_free")
    if kinds.count("decay_mask") != 1 or any(op.attr("base") != "2" for op in fwd.ops if op.kind in ("exp", "decay_mask")):
        problems.append("expected one shared decay mask and exp2 everywhere")
    if "scale_cols" not in kinds or any(op.role in ("w", "u") for op in fwd.ops):
        problems.append("expected w and u eliminated with β on the C×C matrix")
    if {"X_chain", "M_out"} - {op.role for op in fwd.ops} or any(op.role == "v_new" for op in fwd.ops):
        problems.append("expected the chain reassociated (X̃ᵀ W and (P_g A_β) W, no v_new)")
    producer, x_chain, m_out = fwd.producer(), fwd.value_of("X_chain"), fwd.value_of("M_out")
    if x_chain and m_out and (producer[x_chain].kind != "scale_rows" or producer[m_out].kind != "mul"):
        problems.append("expected the gates after the products (gate_after_product: X̃ = diag(β r) Aᵀ K, "
                        "M = G ⊙ (tril(P) A) diag(β))")
    if problems:
        raise UnsupportedRecurrence(f"{form.recurrence.name}: the rewritten forward program does not match "
                                    f"the gdn templates: {'; '.join(problems)}")


def render(rec: Recurrence, heads: Heads, forward: ForwardConfig = ForwardConfig(),
           prepare: PrepareConfig = PrepareConfig()) -> dict[str, str]:
    """{kernel name: TileLang Python source} for the recurrence's forward: gdn_prepare and gdn_forward
    from its chunk programs, and context parallelism's cp_plan and cp_chain (no chunk program)."""
    form = classify(rec)
    compiled = compile_programs(rec)
    check_gdn_shape(form, compiled)
    forward.check(heads)
    prepare.check(heads)
    programs = {"gdn_prepare": ("forward (the inverse's and the gate's part)", prepare),
                "gdn_forward": ("forward", forward)}
    if heads.v_dim % 32 or heads.k_dim % 16:
        raise ValueError(f"cp_chain needs V a multiple of 32 (its V block) and K of 16 (its 16 row groups of "
                         f"threads), got K={heads.k_dim}, V={heads.v_dim}")
    common = dict(version=gdnc.__version__, equation=rec.equation(), ir_hash=rec.ir_hash, heads=heads,
                  dtype=heads.dtype)
    sources = {}
    for kernel, (program_name, config) in programs.items():
        sources[kernel] = _ENV.get_template(f"{kernel}.py.jinja").render(
            **common, kernel=kernel, summary=KERNELS[kernel], config=config, config_text=describe(config),
            program_name=program_name, program_lines=str(compiled.forward.live()).splitlines())
    # the same chunk as gdn_prepare's, so a window's chunks are the ones prepare summarised
    cp_params = {"cp_plan": dict(chunk=prepare.chunk, max_window=MAX_WARMUP_CHUNKS), "cp_chain": {}}
    for kernel, params in cp_params.items():
        sources[kernel] = _ENV.get_template(f"{kernel}.py.jinja").render(
            **common, **params, kernel=kernel, summary=KERNELS[kernel], program_lines=[],
            config_text=", ".join(f"{k}={v}" for k, v in params.items()) or "none")
    return sources
