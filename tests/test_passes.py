"""The chunk programs and their rewrites: numbers, legality, and equality with the references."""
import pytest
import torch

import gdnc
from gdnc.passes.explain import explain
from gdnc.ir import classify
from gdnc.ir.autodiff import build_backward
from gdnc.ir.build import build_forward, build_state_only
from gdnc.ir.cost import cost
from gdnc.reference.interpret import program_forward, program_gradients
from gdnc.passes import compile_programs
from gdnc.passes.cleanup import dce
from gdnc.passes.eliminate_wu import eliminate_wu
from gdnc.passes.fuse_forward import fuse_forward
from gdnc.passes.gate_after_product import gate_after_product
from gdnc.passes.hoist_gates import hoist_gates
from gdnc.passes.merge_gate_gradients import merge_gate_gradients
from gdnc.passes.reassociate_chain import reassociate_chain
from gdnc.passes.share_decay_mask import share_decay_mask
from gdnc.passes.split_state_xy import split_state_xy
from gdnc.passes.use_exp2 import use_exp2
from gdnc.reference import recurrent
from gdnc.reference.compare import random_case, relative_error

TOL = 1e-10
VARIANTS = gdnc.variants()


def stage(report, program, name):
    return next(r for r in report["programs"][program] if r["stage"] == name)


@pytest.fixture(scope="module")
def gdn_report():
    return explain(gdnc.get_variant("gdn"), chunk_size=64, K=128, V=128)


def test_gdn_forward_numbers(gdn_report):
    """C=64, K=V=128: the w GEMM gone (−9% MACs), the chain reassociated (+C³ MACs, 3 → 2 serial
    GEMMs), C×C exps halved, w/u/v_new/h off HBM, no exp > 0."""
    rows = gdn_report["programs"]["forward"]
    base, final = rows[0]["cost"], rows[-1]["cost"]
    before, after = stage(gdn_report, "forward", "hoist_gates")["cost"], stage(gdn_report, "forward", "eliminate_wu")["cost"]
    assert before["tc_macs"] - after["tc_macs"] == 64 * 64 * 128  # one C×C×K GEMM
    fused, reassociated = stage(gdn_report, "forward", "fuse_forward")["cost"], \
        stage(gdn_report, "forward", "reassociate_chain")["cost"]
    assert reassociated["tc_macs"] - fused["tc_macs"] == 64 * 64 * (128 + 64 - 128)
    assert (fused["serial_gemms"], reassociated["serial_gemms"]) == (3, 2)
    assert base["tc_macs"] == int(5.5 * 2**20) and final["tc_macs"] == int(5.25 * 2**20)
    assert final["cxc_exps"] * 2 == base["cxc_exps"] == 2 * (64 * 63 // 2)
    assert final["positive_exps"] == 0
    assert {"w", "u", "v_new", "h"} <= set(rows[0]["hbm_roles"])
    assert not {"w", "u", "v_new", "h"} & set(rows[-1]["hbm_roles"])
    assert rows[-1]["hbm_roles"] == ["A_free"]


def test_gdn_state_chain_three_to_two(gdn_report):
    before = stage(gdn_report, "state", "fuse_forward")["cost"]
    after = stage(gdn_report, "state", "split_state_xy")["cost"]
    assert (before["serial_gemms"], after["serial_gemms"]) == (3, 2)
    assert gdn_report["programs"]["state"][-1]["cost"]["serial_gemms"] == 2


def test_gdn_backward_merges_gate_gradients(gdn_report):
    rows = gdn_report["programs"]["backward"]
    merged = stage(gdn_report, "backward", "merge_gate_gradients")
    assert "merged into one" in merged["note"]
    prog = merged["program"]
    assert prog.count("decay_mask_grad(") == 1
    assert rows[0]["program"].count("decay_mask_grad(") == 2


@pytest.mark.parametrize("name", VARIANTS)
def test_programs_equal_references_at_every_stage(name, gen):
    """Forward, state-only and backward programs, interpreted in float64 after every pass, equal the
    token-by-token reference and its autograd gradients (varlen, GVA, h0)."""
    rec = gdnc.get_variant(name)
    compiled = compile_programs(rec)
    case = random_case(rec, T=0, seqlens=[1, 70, 33], H=2, HV=4, generator=gen)
    leaves = {n: x.detach().clone().requires_grad_(True) for n, x in case.leaves().items()}
    o_ref, ht_ref = recurrent(rec, leaves["q"], leaves["k"], leaves["v"], initial_state=leaves["h0"],
                              output_final_state=True, cu_seqlens=case.cu_seqlens,
                              **{n: leaves[n] for n in case.inputs})
    d_o = torch.randn(o_ref.shape, generator=gen, dtype=torch.float64)
    d_ht = torch.randn(ht_ref.shape, generator=gen, dtype=torch.float64)
    ref_grads = torch.autograd.grad((o_ref * d_o).sum() + (ht_ref * d_ht).sum(), list(leaves.values()),
                                    materialize_grads=True)
    args = dict(initial_state=case.initial_state, cu_seqlens=case.cu_seqlens, chunk_size=32, **case.inputs)
    for program in ("forward", "state"):
        for label, p in compiled.stages[program]:
            o, ht = program_forward(rec, p, case.q, case.k, case.v, **args)
            assert relative_error(ht, ht_ref) <= TOL, f"{name} {program} after {label}: final state"
            if program == "forward":
                assert relative_error(o, o_ref) <= TOL, f"{name} forward after {label}: o"
    for label, p in compiled.stages["backward"]:
        grads = program_gradients(rec, compiled.state, p, case.q, case.k, case.v, d_o, d_ht, **args)
        for leaf, ref in zip(leaves, ref_grads):
            err = relative_error(grads[f"d{leaf}"], ref)
            assert err <= TOL, f"{name} backward after {label}: d{leaf} error {err}"


@pytest.mark.parametrize("name", ["gdn", "kda", "delta_rule"])
def test_programs_under_strong_decay(name, gen):
    rec = gdnc.get_variant(name)
    compiled = compile_programs(rec)
    case = random_case(rec, T=130, gates="strong", generator=gen)
    o_ref, ht_ref = recurrent(rec, case.q, case.k, case.v, initial_state=case.initial_state,
                              output_final_state=True, **case.inputs)
    o, ht = program_forward(rec, compiled.forward, case.q, case.k, case.v, initial_state=case.initial_state,
                            **case.inputs)
    assert relative_error(o, o_ref) <= TOL and relative_error(ht, ht_ref) <= TOL


def _gdn_forward():
    return dce(build_forward(classify(gdnc.get_variant("gdn"))))


def test_hoist_gates_before_after():
    before = _gdn_forward()
    after = hoist_gates(before)
    kinds = lambda p, k: [op for op in p.ops if op.kind == k]  # noqa: E731
    assert [op.attr("mode") for op in kinds(before, "decay_mask")] == ["strict", "inclusive"]
    assert any(op.role == "A_free" and op.kind == "tri_inverse" for op in after.ops)
    free = next(op for op in after.ops if op.role == "A_free" and op.kind == "tri_inverse")
    assert "decay_mask" not in {after.producer()[a].kind for a in after.producer()[free.args[0]].args
                               if a in after.producer()}
    assert "the inverse takes no exp" in after.log[-1]


@pytest.mark.parametrize("name,reason", [("kda", "per-K decay"), ("gla", "identity transition"),
                                         ("delta_rule", "already gate-free")])
def test_hoist_gates_refuses_where_illegal(name, reason):
    p = dce(build_forward(classify(gdnc.get_variant(name))))
    after = hoist_gates(p)
    assert "skipped" in after.log[-1] and reason in after.log[-1]
    assert [str(op) for op in after.ops] == [str(op) for op in p.ops]


def test_eliminate_wu_before_after():
    before = hoist_gates(_gdn_forward())
    after = dce(eliminate_wu(before))
    assert any(op.role == "w" for op in before.ops)
    assert not any(op.role in ("w", "u") for op in after.ops)
    assert cost(before).tc_macs - cost(after).tc_macs == 64 * 64 * 128
    assert any(op.kind == "scale_cols" for op in after.ops)  # β moved onto A


def test_eliminate_wu_refuses_identity_transition():
    p = dce(build_forward(classify(gdnc.get_variant("simple_gla"))))
    assert "skipped (identity transition" in eliminate_wu(p).log[-1]


def test_fuse_forward_removes_spills():
    before = eliminate_wu(hoist_gates(_gdn_forward()))
    after = dce(fuse_forward(before))
    assert {op.role for op in after.ops if op.kind == "hbm"} == {"A_free"}
    assert cost(after).hbm_bytes < cost(before).hbm_bytes


def test_reassociate_chain_before_after_and_refusals():
    before = fuse_forward(eliminate_wu(hoist_gates(_gdn_forward())))
    after = dce(reassociate_chain(before))
    assert not any(op.role == "v_new" for op in after.ops)
    assert {"X_chain", "M_out"} <= {op.role for op in after.ops}
    assert (cost(before).serial_gemms, cost(after).serial_gemms) == (3, 2)
    assert cost(after).tc_macs - cost(before).tc_macs == 64 * 64 * 64  # + X̃ (C·C·K) + M (C·C·C) − A_β W (C·C·V)
    assert "run fuse_forward first" in reassociate_chain(eliminate_wu(hoist_gates(_gdn_forward()))).log[-1]
    assert "run eliminate_wu first" in reassociate_chain(hoist_gates(_gdn_forward())).log[-1]
    identity = dce(build_forward(classify(gdnc.get_variant("simple_gla"))))
    assert "skipped" in reassociate_chain(identity).log[-1]


def test_gate_after_product_before_after_and_refusals():
    before = share_decay_mask(reassociate_chain(fuse_forward(eliminate_wu(hoist_gates(_gdn_forward())))))
    after = dce(gate_after_product(before))
    producer = after.producer()
    x, m = producer[after.value_of("X_chain")], producer[after.value_of("M_out")]
    assert x.kind == "scale_rows" and producer[x.args[0]].kind == "gemm"  # diag(β r) (Aᵀ K)
    assert m.kind == "mul" and producer[m.args[0]].kind == "decay_mask"  # G ⊙ (tril(P) A) diag(β)
    gated = {op.out for op in after.ops
             if op.kind == "mul" and any(producer.get(a) and producer[a].kind == "decay_mask" for a in op.args)}
    assert gated == {m.out}  # no operand of a GEMM is gated any more
    assert cost(after).tc_macs == cost(dce(before)).tc_macs  # (its values: test_programs_equal_references_at_every_stage)
    assert "run reassociate_chain first" in gate_after_product(_gdn_forward()).log[-1]
    unshared = reassociate_chain(fuse_forward(eliminate_wu(hoist_gates(_gdn_forward()))))
    assert "one shared inclusive decay mask" in gate_after_product(unshared).log[-1]


def test_share_decay_mask_before_after():
    before = fuse_forward(eliminate_wu(hoist_gates(_gdn_forward())))
    after = dce(share_decay_mask(before))
    count = lambda p: sum(op.kind == "decay_mask" for op in dce(p).ops)  # noqa: E731
    assert (count(before), count(after)) == (2, 1)
    assert "skipped (per-K" in share_decay_mask(dce(build_forward(classify(gdnc.get_variant("kda"))))).log[-1]


def test_use_exp2_before_after():
    before = _gdn_forward()
    after = use_exp2(before)
    assert all(op.attr("base") == "2" for op in after.ops if op.kind in ("exp", "decay_mask"))
    assert sum(op.kind == "scale" and op.role == "log_decay_2" for op in after.ops) == 1
    assert cost(after).cuda_flops < cost(before).cuda_flops
    assert "skipped (no decay" in use_exp2(dce(build_forward(classify(gdnc.get_variant("delta_rule"))))).log[-1]


def test_split_state_xy_before_after_and_refusals():
    state = build_state_only(classify(gdnc.get_variant("gdn")))
    before = fuse_forward(eliminate_wu(hoist_gates(state)))
    after = dce(split_state_xy(before))
    assert (cost(before).serial_gemms, cost(after).serial_gemms) == (3, 2)
    assert "not a state-only program" in split_state_xy(_gdn_forward()).log[-1]
    kda_state = build_state_only(classify(gdnc.get_variant("kda")))
    assert "still carries gates" in split_state_xy(eliminate_wu(hoist_gates(kda_state))).log[-1]


def test_merge_gate_gradients_before_after():
    fwd = fuse_forward(eliminate_wu(hoist_gates(_gdn_forward())))
    bwd = share_decay_mask(dce(build_backward(dce(fwd))))
    after = dce(merge_gate_gradients(bwd))
    count = lambda p: sum(op.kind == "decay_mask_grad" for op in dce(p).ops)  # noqa: E731
    assert (count(bwd), count(after)) == (2, 1)
    assert cost(after).cuda_flops < cost(bwd).cuda_flops
    unshared = dce(build_backward(dce(fwd)))
    assert "skipped" in merge_gate_gradients(unshared).log[-1]


def test_explain_cli_json(capsys):
    import json

    from gdnc.cli import main

    assert main(["explain", "gdn", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["programs"]) == {"forward", "state", "backward"}
    assert main(["explain", "comba", "--costs-only"]) == 0
    assert "== backward program ==" in capsys.readouterr().out


def test_cse_and_dce_before_after():
    from gdnc.ir.program import Builder
    from gdnc.passes.cleanup import cse

    p = _gdn_forward()
    b = Builder(p)
    twin = b.op("gemm", "q", "k", tb=True, name="P_twin")  # the same product as P
    dead = b.op("exp", "g", base="e", name="unused")
    p.outputs["extra"] = twin
    merged = cse(p)
    assert merged.outputs["extra"] == "P" and "P_twin -> P" in merged.log[-1]
    cleaned = dce(merged)
    assert dead not in {op.out for op in cleaned.ops} and "removed" in cleaned.log[-1]
    assert dead in {op.out for op in merged.ops}


def test_split_state_xy_refuses_identity_transition():
    state = build_state_only(classify(gdnc.get_variant("simple_gla")))
    assert "identity transition" in split_state_xy(state).log[-1]
