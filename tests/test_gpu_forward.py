"""The generated forward kernels on a Hopper GPU against the float64 reference (pytest -m gpu).

Error yardstick: the chunked reference run as the kernel runs it (bf16 matrix-product operands,
fp32 accumulation and state, bf16 output); the kernel may be at most twice as far from float64.
Outputs are poisoned (NaN) before every run, inputs are fresh random each run.
"""
import os
import warnings

import pytest
import torch

import gdnc
from conftest import GPU_MARKS, offsets, write_gpu_report
from conftest import gpu_inputs as inputs
from gdnc.check import kernel_vs_reference
from gdnc.emit.config import DEFAULT_REGISTERS, Heads
from gdnc.runtime.kernels import loaded
from gdnc.runtime.plan import Split, SplitConfig
from gdnc.runtime.policy import DEFAULT_POLICY, HeuristicPolicy

pytestmark = GPU_MARKS

BENCH_HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16), (32, 32)]
LENGTHS = [1, 63, 64, 1000, 4096, 32768]
GDN = gdnc.get_variant("gdn")


RESULTS = []  # every checked case, written to $GDNC_GPU_REPORT (JSON) when that is set


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    write_gpu_report("GDNC_GPU_REPORT", RESULTS)


def kernels_used() -> list:
    """Every (kernel, heads, config) these tests may load: the candidates of each (heads, policy) they
    run, to build ahead of time on a machine without a GPU (benchmarks/build_test_kernels.py)."""
    two_eight = Heads(2, 8)
    runs = [(Heads(hq, hv), DEFAULT_POLICY) for hq, hv in BENCH_HEADS]
    runs += [(two_eight, HeuristicPolicy(forward={"block_v": bv, "m_role": role})) for bv, role in DEFAULT_REGISTERS]
    runs += [(two_eight, HeuristicPolicy(forward={"block_v": bv, "pair_gates": "loader"})) for bv in (32, 64)]
    runs += [(two_eight, HeuristicPolicy(prepare={"inverse": i, "order": o, "heads_per_cta": h}))
             for i, o, h in PREPARE_CASES]
    runs += [(Heads(hq, hv, dtype="float16"), DEFAULT_POLICY) for hq, hv in ((2, 8), (16, 64))]
    return list(dict.fromkeys((kernel, heads, config) for heads, policy in runs
                              for kernel, config in policy.candidates(heads)))


def check(q, k, v, g, beta, h0, cu=None, factor=2.0, policy=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every fallback shows, not only a call site's first
        o, ht, err, yard = kernel_vs_reference(GDN, q, k, v, g, beta, h0, cu, policy=policy)
    fallbacks = [str(w.message) for w in caught if "using the chunked reference" in str(w.message)]
    assert not fallbacks, f"the op did not run the kernels: {fallbacks}"
    torch.cuda.synchronize()
    assert torch.isfinite(o).all(), "o has NaN/inf: an element was not written or overflowed"
    assert torch.isfinite(ht).all(), "final_state has NaN/inf"
    RESULTS.append({"case": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "error": err, "yardstick": yard})
    for name in err:
        assert err[name] <= factor * yard[name] + 1e-6, f"{name}: kernel {err[name]:.2e} vs yardstick {yard[name]:.2e}"
    return o, ht, err, yard


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("h_qk,h_v", BENCH_HEADS)
def test_forward_matches_reference(h_qk, h_v, T):
    check(*inputs(T, h_qk, h_v))


@pytest.mark.parametrize("h_qk,h_v", [(2, 8), (16, 32), (16, 64)])
def test_varlen_with_length_one_sequences(h_qk, h_v):
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    cu = offsets(lengths)
    check(*inputs(sum(lengths), h_qk, h_v, N=len(lengths)), cu=cu)


@pytest.mark.parametrize("gates", ["strong", "mixed"])
@pytest.mark.parametrize("h0", [True, False])
def test_decay_extremes_and_no_initial_state(gates, h0):
    check(*inputs(1000, 4, 16, gates=gates, h0=h0))


def test_batch_of_sequences():
    check(*inputs(1000, 8, 32, B=4, N=4))


@pytest.mark.parametrize("block_v,m_role", sorted(DEFAULT_REGISTERS))
@pytest.mark.parametrize("gates", ["normal", "mixed"])
def test_every_value_block_width(block_v, m_role, gates):
    """Every forward config with a register budget (the widths the op picks from, M on either
    role), whatever the shape would choose: varlen with length-1 sequences, h0, and g = 0 next to
    strong decay."""
    policy = HeuristicPolicy(SplitConfig(segment_len=0), {"block_v": block_v, "m_role": m_role})
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    cu = offsets(lengths)
    check(*inputs(sum(lengths), 2, 8, N=len(lengths), gates=gates), cu=cu, policy=policy)


@pytest.mark.parametrize("segment_len", [0, 256])
@pytest.mark.parametrize("h_qk,h_v", [(2, 8), (16, 64)])
def test_float16(h_qk, h_v, segment_len):
    """fp16 q, k, v on the kernels (built for fp16; the yardstick in fp16): varlen with length-1
    sequences and a tail, g = 0 beside strong decay, h0; the plan's unsplit width (at 16/64 with
    gdn_prepare sharing K Kᵀ across four heads), and split in 256-token segments at 128 columns."""
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    T = sum(lengths)
    policy = HeuristicPolicy(SplitConfig(segment_len=segment_len), {"block_v": 128}) if segment_len else None
    o, _, _, _ = check(*inputs(T, h_qk, h_v, N=len(lengths), gates="mixed", dtype=torch.float16), cu=offsets(lengths),
                       policy=policy)
    assert o.dtype == torch.float16


def test_repeated_runs_are_bitwise_identical():
    args = inputs(4096, 16, 32)
    o1, h1 = gdnc.chunk_gated_delta_rule(*args[:5], initial_state=args[5], output_final_state=True)
    o2, h2 = gdnc.chunk_gated_delta_rule(*args[:5], initial_state=args[5], output_final_state=True)
    assert torch.equal(o1, o2) and torch.equal(h1, h2)


def test_bad_input_is_refused_without_launching():
    q, k, v, g, beta, h0 = inputs(64, 2, 8)
    with pytest.raises(ValueError, match="not a multiple"):
        gdnc.chunk_gated_delta_rule(q, k, v[:, :, :3], g[..., :3], beta[..., :3])
    with pytest.raises(ValueError, match="is on cpu"):
        gdnc.chunk_gated_delta_rule(q, k, v.cpu(), g, beta)
    with pytest.warns(UserWarning, match="checked for K = V = 128, got K=96"):
        gdnc.chunk_gated_delta_rule(q[..., :96], k[..., :96], v, g, beta)
    with pytest.raises(ValueError, match="g must be <= 0: gdn reads it as a log-space gate"):
        gdnc.chunk_gated_delta_rule(q, k, v, g.exp(), beta)  # the decay in linear space, as FlashInfer takes it
    assert os.environ["GDNC_POISON_OUTPUTS"] == "1"


@pytest.mark.parametrize("block_v", [64, 128])
@pytest.mark.parametrize("gates", ["normal", "strong", "mixed"])
@pytest.mark.parametrize("h_qk,h_v", [(2, 8), (16, 32)])
def test_split_sequences(h_qk, h_v, gates, block_v):
    """Context parallelism with short segments over one long and several short sequences (length 1
    included), h0 and final state: the shortcut where every head decays (normal, strong), the exact
    chain where some heads do not (mixed: g = 0 beside g = −30)."""
    lengths = [5000, 1, 63, 3000, 64]
    T = sum(lengths)
    policy = HeuristicPolicy(SplitConfig(segment_len=256), {"block_v": block_v})
    cu = offsets(lengths)
    check(*inputs(T, h_qk, h_v, N=len(lengths), gates=gates), cu=cu, policy=policy)


@pytest.mark.parametrize("lengths", [[32768], [28672, 4096], [1000, 1, 63, 2000]])
def test_calls_are_captured_in_a_cuda_graph(lengths):
    """The op, split (2/8 at these lengths) or not, in a CUDA graph: replays equal eager calls
    bitwise, on the same and on fresh inputs written into the captured buffers."""
    T = sum(lengths)
    cu = offsets(lengths)
    q, k, v, g, beta, h0 = inputs(T, 2, 8, N=len(lengths))
    call = lambda: gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,  # noqa: E731
                                               cu_seqlens=cu)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()  # kernels loaded before capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_graph, ht_graph = call()
    for _ in range(2):
        graph.replay()
        o, ht = call()
        torch.cuda.synchronize()
        assert torch.equal(o_graph, o) and torch.equal(ht_graph, ht)
        for x, fresh in zip((q, k, v, g, beta, h0), inputs(T, 2, 8, N=len(lengths))):
            x.copy_(fresh)


def test_a_fallback_during_capture_is_refused_clearly():
    q, k, v, g, beta, _ = inputs(64, 2, 8)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph: the kernels are built and checked"):
        with torch.cuda.graph(graph):
            gdnc.chunk_gated_delta_rule(q[..., :96], k[..., :96], v, g, beta)


PREPARE_CASES = [("substitution", "chunk", 1), ("blocked", "chunk", 1), ("blocked", "head", 1),
                 ("substitution", "chunk", 4), ("blocked", "chunk", 4), ("blocked", "head", 4)]


@pytest.mark.parametrize("inverse,order,heads_per_cta", PREPARE_CASES)
def test_every_prepare_config(inverse, order, heads_per_cta):
    """Both ways gdn_prepare forms the gate-free inverse, both CTA orders, one value head a CTA and
    all four of a k head (sharing K Kᵀ), on varlen with length-1 sequences and a tail, strong decay
    beside g = 0."""
    policy = HeuristicPolicy(prepare={"inverse": inverse, "order": order, "heads_per_cta": heads_per_cta})
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    cu = offsets(lengths)
    check(*inputs(sum(lengths), 2, 8, N=len(lengths), gates="mixed"), cu=cu, policy=policy)


@pytest.mark.parametrize("segment_len", [0, 256])
@pytest.mark.parametrize("block_v", [32, 64])
def test_pair_gates_on_the_loader(block_v, segment_len):
    """The forward with M's pair gates exponentiated by loader warps a chunk ahead
    (ForwardConfig.pair_gates="loader"), unsplit and split, on varlen with length-1 sequences and a
    tail, strong decay beside g = 0."""
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    T = sum(lengths)
    policy = HeuristicPolicy(SplitConfig(segment_len=segment_len), {"block_v": block_v, "pair_gates": "loader"})
    cu = offsets(lengths)
    check(*inputs(T, 2, 8, N=len(lengths), gates="mixed"), cu=cu, policy=policy)


def prepared(lengths, h_qk, h_v, gates):
    """gdn_prepare's outputs (l2_gate, contracts) on fresh inputs packed as ``lengths`` (a length 0
    allowed: the kernels are called directly, not through the op's argument check), and the
    compiled kernels. β ‖k‖² > 2 in the chunk just before token 2048 (a boundary at segments of 256
    and of 2048), so that boundary is exact whatever the gates."""
    from gdnc.emit.config import PrepareConfig
    from gdnc.reference.problem import Shapes
    from gdnc.runtime.buffers import output_allocator
    from gdnc.runtime.forward import prepare

    T = sum(lengths)
    q, k, v, g, beta, _ = inputs(T, h_qk, h_v, gates=gates, h0=False)
    beta[0, 2048 - 64:2048] *= 3.0
    cu = offsets(lengths)
    s = Shapes(1, T, h_qk, 128, h_v, 128, None, 128 ** -0.5, len(lengths))
    prep = prepare(loaded("gdn", "gdn_prepare", Heads(h_qk, h_v), PrepareConfig()), k, g, beta, s, cu,
                   output_allocator("cuda", poison=True))
    return loaded("gdn", "cp_plan", Heads(h_qk, h_v), None), cu, prep


@pytest.mark.parametrize("config", [SplitConfig(), SplitConfig(tau=-40.0, max_warmup_chunks=3),
                                    SplitConfig(tau=-300.0, max_warmup_chunks=32)])
@pytest.mark.parametrize("gates", ["normal", "strong", "mixed"])
@pytest.mark.parametrize("h_qk,h_v", [(2, 8), (16, 48)])
def test_planner_kernel_equals_the_reference_planner(h_qk, h_v, gates, config):
    """cp_plan against the torch reference planner (gdnc.runtime.cp.plan_slots) on gdn_prepare's outputs,
    bit for bit, every output: varlen with length-0 and length-1 sequences and tails, segments of
    256 tokens (windows of up to 4 chunks) and of 2048 (up to 32)."""
    from gdnc.runtime.cp import plan_slots, run_planner

    lengths = [5000, 1, 0, 63, 3000, 64]
    planner, cu, prep = prepared(lengths, h_qk, h_v, gates)
    T = sum(lengths)
    for segment_len in (256, 2048):
        split = Split(segment_len, -(-T // segment_len), config.tau, config.max_warmup_chunks)
        got = run_planner(planner, cu, prep["l2_gate"], prep["contracts"], split)
        want = plan_slots(cu, prep["l2_gate"], prep["contracts"], split)
        for name, x, y in zip(got._fields, got, want):
            assert x.dtype == y.dtype and torch.equal(x, y), f"{name} (segment_len {segment_len}):\n{x}\n{y}"
        chained = want.start[1:] < want.end[1:]
        exact = want.exact[1:].bool()
        if gates == "mixed" or (gates == "normal" and config.tau == -300.0 and segment_len == 256):
            assert torch.equal(exact, chained)  # no window reaches τ: g = 0 heads, or -300 in 4 chunks
        elif gates == "strong":
            assert int(want.exact.sum()) == 1  # only the expanding chunk's boundary
        if gates == "normal" and config.tau == -300.0 and segment_len == 2048:
            assert ((want.start - want.window_start)[1:][chained & ~exact] > 64 * 4).all()  # long windows


@pytest.mark.parametrize("slots,sequences", [(7, 3), (300, 2)])
def test_chain_kernel_equals_the_reference_chain(slots, sequences):
    """cp_chain against gdnc.runtime.cp.chain_reference (fp32, no TF32): exact steps within fp32 rounding,
    shortcut steps left exactly as warmed up, slot 0 exactly h0; 300 slots take three blocks of flags."""
    from gdnc.reference.compare import relative_error
    from gdnc.runtime.cp import chain_reference

    HV, K = 8, 128
    P, N = slots, sequences
    warm = torch.randn(P * N, HV, K, K, device="cuda")
    transition = torch.randn(P * N, HV, K, K, device="cuda") / (2 * K ** 0.5)  # spectral norm about 1
    exact = (torch.rand(P, N, device="cuda") < 0.5).int()
    exact[0] = 0
    h0 = torch.randn(N, HV, K, K, device="cuda")
    got, want = warm.clone(), warm.clone()
    loaded("gdn", "cp_chain", Heads(2, HV), None)(states=got, transition=transition, exact=exact, initial_state=h0)
    chain_reference(want, transition, exact, h0)
    torch.cuda.synchronize()
    flat = exact.flatten().bool()
    shortcut = ~flat
    shortcut[:N] = False
    assert torch.equal(got[:N], h0) and torch.equal(got[shortcut], warm[shortcut])
    assert relative_error(got[flat], want[flat]) <= 1e-5


def test_captured_split_call_with_an_empty_sequence():
    """A length-0 sequence passes the op during capture (its offsets are not read): split, its final
    state is its h0, and every other output equals the op's without that sequence, bit for bit."""
    lengths = [5000, 0, 63, 3000]
    T = sum(lengths)
    policy = HeuristicPolicy(SplitConfig(segment_len=256), {"block_v": 64})
    q, k, v, g, beta, h0 = inputs(T, 2, 8, N=len(lengths))
    cu = offsets(lengths)
    call = lambda cu_, h0_: gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0_,  # noqa: E731
                                                        output_final_state=True, cu_seqlens=cu_, policy=policy)
    kept = [0, 2, 3]
    cu_kept = offsets([lengths[i] for i in kept])
    o_ref, ht_ref = call(cu_kept, h0[kept].contiguous())  # also loads the kernels before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o, ht = call(cu, h0)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(ht[1], h0[1])
    assert torch.equal(o, o_ref) and torch.equal(ht[kept], ht_ref)
