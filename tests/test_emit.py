"""The emitter on CPU: templates render for every benchmark head configuration, lower for sm_90a,
and nvcc builds them with wgmma, TMA, the expected launch size and no register spills."""
import ast
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

import gdnc
from gdnc.bench.shapes import BACKWARD_HEAD_CONFIGS
from gdnc.emit.config import LOCAL_STATE_GRADIENT, BackwardConfig, ForwardConfig, Heads, PrepareConfig
from gdnc.emit.registry import FIXED_DIMS, KERNELS
from gdnc.emit.render import render
from gdnc.ir.canonical import UnsupportedRecurrence

ROOT = Path(__file__).resolve().parent.parent

BENCH_HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16), (32, 32)]
GDN = gdnc.get_variant("gdn")


def render_all(rec, heads, forward=None, prepare=None) -> dict[str, str]:
    """Every kernel of ``rec`` for ``heads``, the forward and prepare at these configs (None: defaults)."""
    configs = {"gdn_forward": forward, "gdn_prepare": prepare}
    return {name: render(rec, name, heads, configs.get(name)) for name in KERNELS}


def assert_forward_builds(rep) -> None:
    """nvcc built a forward kernel with wgmma, TMA and setmaxnreg, 512 threads, no spills."""
    assert rep.wgmma and rep.tma and rep.setmaxnreg and rep.launch_threads == 512
    assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"register spills {rep}"


@pytest.mark.parametrize("h_qk,h_v", BENCH_HEADS)
def test_render_is_python_with_the_header(h_qk, h_v):
    sources = render_all(GDN, Heads(h_qk, h_v))
    for name, src in sources.items():
        ast.parse(src)
        assert GDN.ir_hash in src and GDN.equation() in src
        assert f"heads:      Heads(h_qk={h_qk}, h_v={h_v}" in src
        # the rewritten program, in the header of the kernels made from it (context parallelism's are not)
        assert ("decay_mask(l; base=2, mode=inclusive)" in src) == name.startswith("gdn_")
    assert "block_v=64" in sources["gdn_forward"]


@pytest.mark.nvcc
@pytest.mark.parametrize("h_qk,h_v,block_v", [(hq, hv, 128) for hq, hv in BENCH_HEADS] + [(2, 8, 32), (2, 8, 64)])
def test_lower_and_nvcc(h_qk, h_v, block_v, built):
    heads = Heads(h_qk, h_v)
    prepare = built("gdn_prepare", heads, PrepareConfig())[1]
    forward = built("gdn_forward", heads, ForwardConfig(block_v=block_v))[1]
    for name, rep in (("prepare", prepare), ("forward", forward)):
        assert rep.wgmma, f"{name}: no wgmma in the generated CUDA"
        assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"{name}: register spills {rep}"
        assert rep.registers <= 255
    assert prepare.launch_threads == 128
    # four warpgroups: state, prepare, output, loader — each with its setmaxnreg budget
    assert forward.launch_threads == 512 and forward.registers <= 128
    assert forward.tma, "forward: the loader's copies are not TMA"
    assert forward.setmaxnreg, "forward: no per-role register budgets"


@pytest.mark.nvcc
def test_substitution_inverse_lowers_and_builds(built):
    """The prepare kernel's other inverse (one thread per column of A): the blocked one's fallback."""
    blocked = render(GDN, "gdn_prepare", Heads(2, 8))
    source = render(GDN, "gdn_prepare", Heads(2, 8), PrepareConfig(inverse="substitution"))
    assert "inverse=substitution" in source and "inverse=blocked" in blocked
    assert "half_product" in blocked and "half_product" not in source
    rep = built("gdn_prepare", Heads(2, 8), PrepareConfig(inverse="substitution"))[1]
    assert rep.wgmma and rep.spill_stores == rep.spill_loads == rep.stack_frame == 0 and rep.launch_threads == 128


@pytest.mark.nvcc
def test_prepare_in_head_order_lowers_and_builds(built):
    """PrepareConfig(order="head"): one grid axis, the value heads of a chunk adjacent (so the GVA
    heads sharing its k run together); the same kernel body, no spills, one CTA per (slot, head)."""
    source = render(GDN, "gdn_prepare", Heads(16, 48), PrepareConfig(order="head"))
    assert "order=head" in source and "slot, head_block = cta // HEAD_BLOCKS, cta % HEAD_BLOCKS" in source
    cuda, rep = built("gdn_prepare", Heads(16, 48), PrepareConfig(order="head"))
    assert "blockIdx.y" not in cuda and "blockIdx.x)) % (int64_t)48" in cuda  # head = cta % H_V
    assert rep.wgmma and rep.spill_stores == rep.spill_loads == rep.stack_frame == 0 and rep.launch_threads == 128


@pytest.mark.nvcc
@pytest.mark.parametrize("h_qk,h_v,order", [(hq, hv, "chunk") for hq, hv in BENCH_HEADS if hv > hq] + [(16, 48, "head")])
def test_prepare_sharing_k_across_value_heads_lowers_and_builds(h_qk, h_v, order, built):
    """PrepareConfig(heads_per_cta=group), which the plan picks for long calls: one CTA prepares
    every value head of a k head, loading k and forming K Kᵀ (one wgmma) once for them; no spills."""
    group = h_v // h_qk
    config = PrepareConfig(heads_per_cta=group, order=order)
    source = render(GDN, "gdn_prepare", Heads(h_qk, h_v), config)
    assert f"heads_per_cta={group}" in source and f"HEADS_PER_CTA = {group}" in source and "kk_kept" in source
    cuda, rep = built("gdn_prepare", Heads(h_qk, h_v), config)
    assert cuda.count("wgmma_ss<tl::DataType::kBFloat16") == 1  # K Kᵀ, once for the group
    assert f"for (int member = 0; member < {group}; ++member)" in cuda
    assert rep.wgmma and rep.spill_stores == rep.spill_loads == rep.stack_frame == 0 and rep.launch_threads == 128


@pytest.mark.parametrize("name,message", [
    ("kda", r"kda: no kernel template yet for its form: the decay is per-K \(diag\(exp\(g\)\)\); the templates take "
            r"a scalar decay"),
    ("comba", r"comba: no kernel template yet for its form: the erase reads the state along p, not along the written "
              r"key k"),
    ("simple_gla", r"the transition is the identity .*; the write is k \* \(v\).T"),
])
def test_unsupported_recurrence_is_refused_naming_what_differs(name, message):
    with pytest.raises(UnsupportedRecurrence, match=message):
        render(gdnc.get_variant(name), "gdn_forward", Heads(2, 4))


def test_config_checks():
    with pytest.raises(ValueError, match=r"block_v must be one of \(32, 64, 128\) and divide V=96"):
        render(GDN, "gdn_forward", Heads(2, 4, 128, 96), ForwardConfig(block_v=64))
    with pytest.raises(ValueError, match="the forward kernel is written for K = 128, got K=64"):
        render(GDN, "gdn_forward", Heads(2, 4, 64, 128), ForwardConfig(block_v=64))
    with pytest.raises(TypeError, match="gdn_forward takes a ForwardConfig, got PrepareConfig"):
        render(GDN, "gdn_forward", Heads(2, 4), PrepareConfig())
    with pytest.raises(ValueError, match="unknown kernel 'gdn_bwd'"):
        render(GDN, "gdn_bwd", Heads(2, 4))
    with pytest.raises(ValueError, match="the backward kernel is written for K = V = 128 .* got K=128, V=64"):
        render(GDN, "gdn_backward", Heads(2, 4, 128, 64))
    with pytest.raises(ValueError, match=r"BackwardConfig.roles must be one of \('serial', 'specialised'\)"):
        BackwardConfig(roles="pipelined").check(Heads(2, 4))
    with pytest.raises(ValueError, match="state_gradient_only is a serial build"):
        BackwardConfig(roles="specialised", state_gradient_only=True).check(Heads(2, 4))
    with pytest.raises(ValueError, match="the serial build takes none"):
        BackwardConfig(roles="serial", registers=(160, 120, 192, 40)).check(Heads(2, 4))
    with pytest.raises(ValueError, match="registers must be 4 multiples of 8"):
        BackwardConfig(roles="specialised", registers=(168, 128, 192, 40)).check(Heads(2, 4))
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
    assert set(render_all(renamed, Heads(2, 8))) == set(KERNELS)
    h, beta = Input("h"), Input("beta")
    other_gate = GDN.replace(update=gdnc.exp(h) * (gdnc.I - beta * gdnc.k * gdnc.k.T) * gdnc.S
                             + beta * gdnc.k * gdnc.v.T)
    with pytest.raises(UnsupportedRecurrence, match="the decay is scalar \\(exp\\(h\\)\\); the templates take"):
        render(other_gate, "gdn_prepare", Heads(2, 8))


@pytest.mark.parametrize("block_v,pair_gates,m_role", [(32, "output", "output"), (32, "loader", "output"),
                                                        (128, "output", "prepare")])
def test_trace_points_only_in_the_trace_build(block_v, pair_gates, m_role, monkeypatch):
    config = ForwardConfig(block_v=block_v, pair_gates=pair_gates, m_role=m_role)
    plain = render(GDN, "gdn_forward", Heads(2, 8), config)
    traced = render(GDN, "gdn_forward", Heads(2, 8), dataclasses.replace(config, trace=True))
    assert "mark(" not in plain and "trace" not in plain.split('"""')[2]  # not even the parameter
    ast.parse(traced)
    sites = re.findall(r"mark\(trace, tx, first_cta, (STATE|PREPARE|OUTPUT|LOADER), c, (\d), \d+\)", traced)
    assert len(sites) == len(set(sites))  # each point once
    # the points are numbered 0.. per role and named, one name each, by the script that reads them
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script's own imports, as when it runs
    spec = importlib.util.spec_from_file_location("trace_forward", ROOT / "benchmarks" / "trace_forward.py")
    trace_forward = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace_forward)
    points = trace_forward.points_of(config)
    for role, names in points.items():
        assert sorted(int(e) for r, e in sites if r == role.upper()) == list(range(len(names))), role
    assert 'trace: T.Tensor((4, traced_chunks, 8), "int64")' in traced


@pytest.mark.nvcc
@pytest.mark.parametrize("block_v", [32, 64])
def test_pair_gates_on_the_loader_lower_and_build(block_v, built):
    """ForwardConfig(pair_gates="loader"): M's pair gates in a shared ring of their own, written by
    loader warps 2 and 3; the default forms them in the output role and has neither."""
    config = ForwardConfig(block_v=block_v, pair_gates="loader")
    default = render(GDN, "gdn_forward", Heads(16, 32), ForwardConfig(block_v=block_v))
    source = render(GDN, "gdn_forward", Heads(16, 32), config)
    assert "pair_gates=loader" in source and "pair_gates=output" in default
    for name in ("gate_in", "gate_ready", "gate_free"):
        assert name in source.split('"""')[2] and name not in default.split('"""')[2]
    assert_forward_builds(built("gdn_forward", Heads(16, 32), config)[1])


@pytest.mark.nvcc
@pytest.mark.parametrize("block_v", [64, 128])
def test_m_on_the_prepare_role_lower_and_build(block_v, built):
    """ForwardConfig(m_role="prepare"), the default at 128 columns: M's product takes tril(Q Kᵀ)
    from registers (wgmma with a register operand), so there is no P tile and no P hand-off; at 128
    one Ŝ buffer (two do not fit in shared memory)."""
    config = ForwardConfig(block_v=block_v, m_role="prepare")
    body = render(GDN, "gdn_forward", Heads(16, 32), config).split('"""')[2]
    assert "m_role=prepare" in render(GDN, "gdn_forward", Heads(16, 32), config)
    assert "p_masked" not in body and "p_free" not in body
    assert f"SNAPSHOTS = {1 if block_v == 128 else 2}" in body
    cuda, rep = built("gdn_forward", Heads(16, 32), config)
    assert "wgmma_rs" in cuda
    assert_forward_builds(rep)


SIGNATURE_CASES = [("gdn_prepare", Heads(2, 8), PrepareConfig()), ("gdn_prepare", Heads(16, 48), PrepareConfig(heads_per_cta=3)),
                   ("gdn_forward", Heads(2, 8), ForwardConfig(block_v=32)),
                   ("gdn_forward", Heads(16, 32), ForwardConfig(block_v=128, trace=True)),
                   ("gdn_forward", Heads(2, 8, dtype="float16"), ForwardConfig(block_v=64)),
                   ("gdn_forward", Heads(2, 8), ForwardConfig(block_v=64, store_states=True)),
                   ("gdn_backward", Heads(16, 32), BackwardConfig(roles="specialised")),
                   ("gdn_backward", Heads(2, 4, dtype="float16"), BackwardConfig(roles="specialised")),
                   ("gdn_backward", Heads(16, 32), BackwardConfig(roles="serial")),
                   ("gdn_backward", Heads(16, 32), LOCAL_STATE_GRADIENT),
                   ("cp_plan", Heads(2, 8), None), ("cp_chain", Heads(16, 64), None)]


@pytest.mark.parametrize("kernel,heads,config", SIGNATURE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(SIGNATURE_CASES)])
def test_the_registry_declares_each_kernels_signature(kernel, heads, config):
    """What the launcher binds by name (and the custom op and exporter will read) is the rendered
    kernel's TileLang signature: names and order, scalars and tensors, dtypes, fixed and dynamic sizes."""
    from gdnc.emit.build import load_prim_func
    from gdnc.emit.cache import materialize

    declared = KERNELS[kernel]
    func = load_prim_func(materialize(render(GDN, kernel, heads, config), kernel, GDN.ir_hash))
    from tvm import tirx  # TileLang's TVM: importable once tilelang is
    params = declared.params_for(config)
    names = [func.buffer_map[var].name if var in func.buffer_map else var.name for var in func.params]
    assert [p.name for p in params] == names
    fixed = {"H": heads.h_qk, "HV": heads.h_v, "K": heads.k_dim, "V": heads.v_dim, "C": 64}
    assert set(fixed) == set(FIXED_DIMS)
    for param, var in zip(params, func.params):
        buffer = func.buffer_map.get(var)
        if param.kind == "scalar":
            assert buffer is None and str(var.dtype) == param.dtype, param.name
            continue
        assert str(buffer.dtype) == (heads.dtype if param.dtype == "operand" else param.dtype), param.name
        assert len(buffer.shape) == len(param.shape), param.name
        for dim, size in zip(param.shape, buffer.shape):
            if isinstance(size, tirx.IntImm):
                assert fixed.get(dim, dim) == size.value, (param.name, dim)
            else:
                assert dim not in FIXED_DIMS and dim == size.name, (param.name, dim)


SPECIALISED = BackwardConfig(roles="specialised")


@pytest.mark.nvcc
@pytest.mark.parametrize("h_qk,h_v", BACKWARD_HEAD_CONFIGS)
def test_backward_lowers_and_builds(h_qk, h_v, built):
    """gdn_backward's specialised build for every head configuration of the backward benchmark: the
    program's check passes, it lowers for sm_90a, and nvcc builds it with wgmma, TMA loads and each
    role's register budget (setmaxnreg) on 512 threads, no atomics (its spills: the next test)."""
    heads = Heads(h_qk, h_v)
    source = render(GDN, "gdn_backward", heads, SPECIALISED)
    assert "merge_gate_gradients" in source and f"H_QK, H_V, K_DIM, V_DIM = {h_qk}, {h_v}, 128, 128" in source
    cuda, rep = built("gdn_backward", heads, SPECIALISED)
    assert rep.wgmma and rep.tma and rep.setmaxnreg and rep.launch_threads == 512
    budgets = SPECIALISED.registers
    assert [int(n) for n in re.findall(r"warpgroup_reg_(?:alloc|dealloc)<(\d+)>", cuda)] == list(budgets)
    assert "atomicAdd" not in cuda, "order-dependent atomics would make the gradients unrepeatable"


@pytest.mark.nvcc
@pytest.mark.xfail(strict=True, reason="nvcc 13.0 spills 12 bytes: the value role needs more than its 120 registers "
                                       "(20 bytes built alone), and the others none to spare (chain 152, pairs 184 or "
                                       "loader 32 spill); to be removed before the specialised build becomes the op's")
def test_specialised_backward_has_no_spills(built):
    _, rep = built("gdn_backward", Heads(16, 32), SPECIALISED)
    assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"register spills {rep}"


SHARED_MEMORY_PER_BLOCK = 232448  # Hopper's opt-in limit (227 KiB), dynamic and static together


@pytest.mark.nvcc
def test_specialised_backward_fits_in_shared_memory(tmp_path, built):
    """The specialised build's buffers (inputs once each, dS hi and lo, the hand-offs) and its mbarriers
    fit one CTA's shared memory: a launch past the limit fails only on the GPU."""
    from gdnc.emit import build

    path = tmp_path / "gdn_backward.py"
    path.write_text(render(GDN, "gdn_backward", Heads(16, 32), SPECIALISED))
    dynamic = build.dynamic_shared_memory(build.lower_artifact(path))
    cuda, _ = built("gdn_backward", Heads(16, 32), SPECIALISED)
    # the mbarriers are static: `__shared__ __align__(16) uint64_t <name>_mem[n]`, each 16-byte aligned
    static = sum(-(-8 * int(n) // 16) * 16 for n in re.findall(r"__shared__ __align__\(16\) uint64_t \w+_mem\[(\d+)\]", cuda))
    assert static > 0 and dynamic > 200 * 1024, (static, dynamic)
    assert dynamic + static <= SHARED_MEMORY_PER_BLOCK, f"{dynamic} + {static} bytes of shared memory"


@pytest.mark.nvcc
def test_serial_backward_builds(built):
    """The serial build (roles="serial"): dS in the registers of two warpgroups, every GEMM on all 256
    threads, TMA loads, no spills (loads staged through registers made it spill)."""
    cuda, rep = built("gdn_backward", Heads(16, 32), BackwardConfig(roles="serial"))
    assert rep.wgmma and rep.tma and rep.launch_threads == 256 and rep.registers <= 255
    assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"register spills {rep}"
    assert "atomicAdd" not in cuda


@pytest.mark.nvcc
def test_state_gradient_pass_is_the_chain_of_ds_alone(built):
    """LOCAL_STATE_GRADIENT (a serial build, state_gradient_only), context parallelism's local state
    gradients: the backward's GEMMs on the chain of dS only (P, K dS, Pgᵀ dO, A_βᵀ dV', Qᵀ dO', Kᵀ dU:
    6 of the serial build's 21), reading neither states nor v and writing no token gradient; it builds
    without spills."""
    heads = Heads(16, 32)
    code = lambda source: source[source.index("def build"):]  # noqa: E731  past the docstrings
    full = code(render(GDN, "gdn_backward", heads, BackwardConfig(roles="serial")))
    chain = code(render(GDN, "gdn_backward", heads, LOCAL_STATE_GRADIENT))
    assert full.count("T.gemm(") == 21 and chain.count("T.gemm(") == 6
    for name in ("states[", "v[t0", "dq_head", "dk_head", "dv[", "dg[", "dbeta[", "initial_state"):
        assert name in full and name not in chain, name
    cuda, rep = built("gdn_backward", heads, LOCAL_STATE_GRADIENT)
    assert rep.wgmma and rep.tma and rep.launch_threads == 256
    assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"register spills {rep}"


@pytest.mark.nvcc
def test_states_pass_is_the_forward_storing_each_chunk_start_state(built):
    """ForwardConfig(store_states=True): the forward with one more store, of Ŝ, in the state role; the
    default build does not take the states arguments."""
    plain = render(GDN, "gdn_forward", Heads(2, 8), ForwardConfig(block_v=64))
    states = render(GDN, "gdn_forward", Heads(2, 8), ForwardConfig(block_v=64, store_states=True))
    assert "state_slot" not in plain and "states[state_slot[seq] + c, head, i, v0 + j]" in states
    assert_forward_builds(built("gdn_forward", Heads(2, 8), ForwardConfig(block_v=64, store_states=True))[1])


def test_backward_program_shape_is_checked():
    from gdnc.emit.shapes import gdn_backward_program
    from gdnc.emit.render import derived

    backward = derived(GDN)[1].backward
    assert gdn_backward_program(backward) == []
    unmerged = backward.copy()
    unmerged.outputs = {k: v for k, v in unmerged.outputs.items() if k != "d_g"}
    assert any("outputs" in p for p in gdn_backward_program(unmerged))
