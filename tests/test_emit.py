"""The emitter on CPU: templates render for every benchmark head configuration, lower for sm_90a,
and nvcc builds them with wgmma, TMA, the expected launch size and no register spills."""
import ast
import dataclasses
import importlib.util
import re
import shutil
from pathlib import Path

import pytest

import gdnc
from gdnc.emit.build import lower_cuda, nvcc_report
from gdnc.emit.config import ForwardConfig, Heads, PrepareConfig
from gdnc.emit.render import render
from gdnc.ir.classify import UnsupportedRecurrence

ROOT = Path(__file__).resolve().parent.parent

BENCH_HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16), (32, 32)]
GDN = gdnc.get_variant("gdn")
KERNELS = {"gdn_prepare", "gdn_forward", "cp_plan", "cp_chain"}


def assert_forward_builds(cuda: str) -> None:
    """nvcc builds a forward kernel's CUDA with wgmma, TMA and setmaxnreg, 512 threads, no spills."""
    rep = nvcc_report(cuda)
    assert rep.wgmma and rep.tma and rep.setmaxnreg and rep.launch_threads == 512
    assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"register spills {rep}"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gdnc-cache"))


@pytest.mark.parametrize("h_qk,h_v", BENCH_HEADS)
def test_render_is_python_with_the_header(h_qk, h_v):
    sources = render(GDN, Heads(h_qk, h_v))
    assert set(sources) == KERNELS
    for name, src in sources.items():
        ast.parse(src)
        assert GDN.ir_hash in src and GDN.equation() in src
        assert f"heads:      Heads(h_qk={h_qk}, h_v={h_v}" in src
        # the rewritten program, in the header of the kernels made from it (context parallelism's are not)
        assert ("decay_mask(l; base=2, mode=inclusive)" in src) == name.startswith("gdn_")
    assert "block_v=64" in sources["gdn_forward"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("h_qk,h_v,block_v", [(hq, hv, 128) for hq, hv in BENCH_HEADS] + [(2, 8, 32), (2, 8, 64)])
def test_lower_and_nvcc(h_qk, h_v, block_v):
    sources = render(GDN, Heads(h_qk, h_v), ForwardConfig(block_v=block_v), PrepareConfig())
    prepare = nvcc_report(lower_cuda(sources["gdn_prepare"], "gdn_prepare", GDN.ir_hash))
    forward = nvcc_report(lower_cuda(sources["gdn_forward"], "gdn_forward", GDN.ir_hash))
    for name, rep in (("prepare", prepare), ("forward", forward)):
        assert rep.wgmma, f"{name}: no wgmma in the generated CUDA"
        assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"{name}: register spills {rep}"
        assert rep.registers <= 255
    assert prepare.launch_threads == 128
    # four warpgroups: state, prepare, output, loader — each with its setmaxnreg budget
    assert forward.launch_threads == 512 and forward.registers <= 128
    assert forward.tma, "forward: the loader's copies are not TMA"
    assert forward.setmaxnreg, "forward: no per-role register budgets"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
def test_substitution_inverse_lowers_and_builds():
    """The prepare kernel's other inverse (one thread per column of A): the blocked one's fallback."""
    blocked = render(GDN, Heads(2, 8))["gdn_prepare"]
    source = render(GDN, Heads(2, 8), ForwardConfig(), PrepareConfig(inverse="substitution"))["gdn_prepare"]
    assert "inverse=substitution" in source and "inverse=blocked" in blocked
    assert "half_product" in blocked and "half_product" not in source
    rep = nvcc_report(lower_cuda(source, "gdn_prepare", GDN.ir_hash))
    assert rep.wgmma and rep.spill_stores == rep.spill_loads == rep.stack_frame == 0 and rep.launch_threads == 128


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
def test_prepare_in_head_order_lowers_and_builds():
    """PrepareConfig(order="head"): one grid axis, the value heads of a chunk adjacent (so the GVA
    heads sharing its k run together); the same kernel body, no spills, one CTA per (slot, head)."""
    source = render(GDN, Heads(16, 48), ForwardConfig(), PrepareConfig(order="head"))["gdn_prepare"]
    assert "order=head" in source and "slot, head_block = cta // HEAD_BLOCKS, cta % HEAD_BLOCKS" in source
    cuda = lower_cuda(source, "gdn_prepare", GDN.ir_hash)
    assert "blockIdx.y" not in cuda and "blockIdx.x)) % (int64_t)48" in cuda  # head = cta % H_V
    rep = nvcc_report(cuda)
    assert rep.wgmma and rep.spill_stores == rep.spill_loads == rep.stack_frame == 0 and rep.launch_threads == 128


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("h_qk,h_v,order", [(hq, hv, "chunk") for hq, hv in BENCH_HEADS if hv > hq] + [(16, 48, "head")])
def test_prepare_sharing_k_across_value_heads_lowers_and_builds(h_qk, h_v, order):
    """PrepareConfig(heads_per_cta=group), which the plan picks for long calls: one CTA prepares
    every value head of a k head, loading k and forming K Kᵀ (one wgmma) once for them; no spills."""
    group = h_v // h_qk
    source = render(GDN, Heads(h_qk, h_v), ForwardConfig(), PrepareConfig(heads_per_cta=group, order=order))["gdn_prepare"]
    assert f"heads_per_cta={group}" in source and f"HEADS_PER_CTA = {group}" in source and "kk_kept" in source
    cuda = lower_cuda(source, "gdn_prepare", GDN.ir_hash)
    assert cuda.count("wgmma_ss<tl::DataType::kBFloat16") == 1  # K Kᵀ, once for the group
    assert f"for (int member = 0; member < {group}; ++member)" in cuda
    rep = nvcc_report(cuda)
    assert rep.wgmma and rep.spill_stores == rep.spill_loads == rep.stack_frame == 0 and rep.launch_threads == 128


def test_unsupported_recurrence_is_refused_with_reason():
    with pytest.raises(UnsupportedRecurrence, match="no kernel template yet.*per-K"):
        render(gdnc.get_variant("kda"), Heads(2, 4))


def test_config_checks():
    with pytest.raises(ValueError, match=r"block_v must be one of \(32, 64, 128\) and divide V=96"):
        render(GDN, Heads(2, 4, 128, 96), ForwardConfig(block_v=64))
    with pytest.raises(ValueError, match="block_v must be one of"):
        ForwardConfig(block_v=16).check(Heads(2, 4))
    with pytest.raises(ValueError, match="registers must be 4 multiples of 8"):
        ForwardConfig(block_v=64, registers=(256, 256, 128, 40)).check(Heads(2, 4))
    with pytest.raises(ValueError, match=r"no default for block_v=128 with m_role='output'"):
        ForwardConfig(block_v=128, m_role="output").check(Heads(2, 4))
    with pytest.raises(ValueError, match="m_role must be 'output' or 'prepare', got 'loader'"):
        ForwardConfig(m_role="loader").check(Heads(2, 4))
    with pytest.raises(ValueError, match="pair_gates='loader' needs m_role='output'"):
        ForwardConfig(block_v=128, pair_gates="loader").check(Heads(2, 4))
    with pytest.raises(ValueError, match="h_v=6 must be a multiple of h_qk=4"):
        Heads(4, 6)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Heads(2, 4, dtype="float32")
    with pytest.raises(ValueError, match="inverse must be 'substitution' or 'blocked'"):
        PrepareConfig(inverse="tf32").check(Heads(2, 4))
    with pytest.raises(ValueError, match="order must be 'chunk' or 'head', got 'sequence'"):
        PrepareConfig(order="sequence").check(Heads(2, 4))
    with pytest.raises(ValueError, match=r"heads_per_cta must divide h_v / h_qk = 3 .* got 2"):
        PrepareConfig(heads_per_cta=2).check(Heads(16, 48))
    with pytest.raises(ValueError, match=r"heads_per_cta must divide h_v / h_qk = 4 .* got 0"):
        PrepareConfig(heads_per_cta=0).check(Heads(2, 8))
    with pytest.raises(ValueError, match=r"ctas_per_sm must be in 1\.\.4 .* got 5 for 'blocked'"):
        PrepareConfig(ctas_per_sm=5).check(Heads(2, 4))
    with pytest.raises(ValueError, match=r"1\.\.3 for the substitution .* got 4 for 'substitution'"):
        PrepareConfig(ctas_per_sm=4, inverse="substitution").check(Heads(2, 4))


def test_templates_go_by_the_math_not_the_name():
    from gdnc.ir import Input

    renamed = GDN.replace(name="my_gdn")
    assert set(render(renamed, Heads(2, 8))) == KERNELS
    h, beta = Input("h"), Input("beta")
    other_gate = GDN.replace(update=gdnc.exp(h) * (gdnc.I - beta * gdnc.k * gdnc.k.T) * gdnc.S
                             + beta * gdnc.k * gdnc.v.T)
    with pytest.raises(UnsupportedRecurrence, match="need the decay exp\\(g\\)"):
        render(other_gate, Heads(2, 8))


@pytest.mark.parametrize("block_v,pair_gates,m_role", [(32, "output", "output"), (32, "loader", "output"),
                                                        (128, "output", "prepare")])
def test_trace_points_only_in_the_trace_build(block_v, pair_gates, m_role):
    config = ForwardConfig(block_v=block_v, pair_gates=pair_gates, m_role=m_role)
    plain = render(GDN, Heads(2, 8), config)["gdn_forward"]
    traced = render(GDN, Heads(2, 8), dataclasses.replace(config, trace=True))["gdn_forward"]
    assert "mark(" not in plain and "trace" not in plain.split('"""')[2]  # not even the parameter
    ast.parse(traced)
    sites = re.findall(r"mark\(trace, tx, first_cta, (STATE|PREPARE|OUTPUT|LOADER), c, (\d), \d+\)", traced)
    assert len(sites) == len(set(sites))  # each point once
    # the points are numbered 0.. per role and named, one name each, by the script that reads them
    spec = importlib.util.spec_from_file_location("trace_forward", ROOT / "benchmarks" / "trace_forward.py")
    trace_forward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace_forward)
    points = trace_forward.points_of(config)
    for role, names in points.items():
        assert sorted(int(e) for r, e in sites if r == role.upper()) == list(range(len(names))), role
    assert 'trace: T.Tensor((4, traced_chunks, 8), "int64")' in traced


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("block_v", [32, 64])
def test_pair_gates_on_the_loader_lower_and_build(block_v):
    """ForwardConfig(pair_gates="loader"): M's pair gates in a shared ring of their own, written by
    loader warps 2 and 3; the default forms them in the output role and has neither."""
    default = render(GDN, Heads(16, 32), ForwardConfig(block_v=block_v))["gdn_forward"]
    source = render(GDN, Heads(16, 32), ForwardConfig(block_v=block_v, pair_gates="loader"))["gdn_forward"]
    assert "pair_gates=loader" in source and "pair_gates=output" in default
    for name in ("gate_in", "gate_ready", "gate_free"):
        assert name in source.split('"""')[2] and name not in default.split('"""')[2]
    assert_forward_builds(lower_cuda(source, "gdn_forward", GDN.ir_hash))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("block_v", [64, 128])
def test_m_on_the_prepare_role_lower_and_build(block_v):
    """ForwardConfig(m_role="prepare"), the default at 128 columns: M's product takes tril(Q Kᵀ)
    from registers (wgmma with a register operand), so there is no P tile and no P hand-off; at 128
    one Ŝ buffer (two do not fit in shared memory)."""
    source = render(GDN, Heads(16, 32), ForwardConfig(block_v=block_v, m_role="prepare"))["gdn_forward"]
    body = source.split('"""')[2]
    assert "m_role=prepare" in source and "p_masked" not in body and "p_free" not in body
    assert f"SNAPSHOTS = {1 if block_v == 128 else 2}" in body
    cuda = lower_cuda(source, "gdn_forward", GDN.ir_hash)
    assert "wgmma_rs" in cuda
    assert_forward_builds(cuda)
