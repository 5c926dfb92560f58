"""Context parallelism's device-side driver (gdnc.runtime.cp) on CPU, with the chunked reference as its
packed forward: exact where it chains, within the shortcut's bound where it warms up."""
import math

import pytest
import torch
import torch.nn.functional as F

import gdnc
from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.chunked_form import chunked
from gdnc.reference.compare import relative_error
from gdnc.reference.segments import non_expansive
from gdnc.runtime.cp import chain_reference, plan_slots, split_forward
from gdnc.runtime.plan import Split

GDN = gdnc.get_variant("gdn")
LENGTHS = [450, 1, 63, 200]  # one long sequence, a length-1 one, a tail


def packed_case(gen, lengths=LENGTHS, H=2, HV=4, K=16, gates="normal"):
    """Packed float64 inputs: q, k [T, H, K]; v [T, HV, K]; g, beta [T, HV]; h0 [N, HV, K, K]."""
    T = sum(lengths)
    q = F.normalize(torch.randn(T, H, K, generator=gen, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(T, H, K, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(T, HV, K, generator=gen, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(T, HV, generator=gen, dtype=torch.float64))
    if gates == "mixed":  # a head without decay beside a strongly decaying one
        g[:, 0], g[:, 1] = 0.0, -30.0
    beta = torch.rand(T, HV, generator=gen, dtype=torch.float64)
    h0 = torch.randn(len(lengths), HV, K, K, generator=gen, dtype=torch.float64)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return q, k, v, g, beta, h0, cu


def log2_gate(g, cu, chunk=CHUNK_SIZE):
    """gdn_prepare's l2_gate [tokens, HV]: the log2 gate summed from each chunk's start."""
    out = torch.empty_like(g)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        for c in range(a, b, chunk):
            out[c:min(c + chunk, b)] = g[c:min(c + chunk, b)].cumsum(0) / math.log(2)
    return out


def chunk_contracts(k, beta, cu, chunk=CHUNK_SIZE):
    """gdn_prepare's contracts [tokens, HV]: at each chunk's first row 1.0 if every token of the
    chunk has a non-expansive transition, else 0.0; NaN on the other rows, which are never read."""
    ok = non_expansive(k, beta)
    out = torch.full(beta.shape, float("nan"), dtype=torch.float32)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        for c in range(a, b, chunk):
            out[c] = ok[c:min(c + chunk, b)].all(0).float()
    return out


def reference_forward(q, k, g, beta):
    """The chunked reference as split_forward's packed forward over token ranges: it writes only
    the end states final_row asks for, so a pass that misses one leaves it NaN."""
    def forward(v, h0, start, end, o, final, final_row):
        for i, (a, b, row) in enumerate(zip(start.tolist(), end.tolist(), final_row.tolist())):
            state = torch.zeros(final.shape[1:], dtype=torch.float64) if h0 is None else h0[i].double()
            if b > a:
                o_i, ht = chunked(GDN, q[None, a:b], k[None, a:b], v[None, a:b], g=g[None, a:b],
                                  beta=beta[None, a:b], initial_state=state[None], output_final_state=True)
                o[a:b], state = o_i[0].to(o.dtype), ht[0]
            if row >= 0:
                final[row] = state.to(final.dtype)
    return forward


def unsplit(q, k, v, g, beta, h0, cu):
    o, ht = chunked(GDN, q[None], k[None], v[None], g=g[None], beta=beta[None], initial_state=h0,
                    output_final_state=True, cu_seqlens=cu)
    return o[0], ht


def run_split(q, k, v, g, beta, h0, cu, segment_len, **limits):
    split = Split(segment_len, -(-q.shape[0] // segment_len), **limits)
    slots = plan_slots(cu, log2_gate(g, cu), chunk_contracts(k, beta, cu), split)
    o = torch.full_like(v, float("nan"))
    nan = lambda *shape, dt: torch.full(shape, float("nan"), dtype=dt)  # noqa: E731  every state read must be written
    final = split_forward(reference_forward(q, k, g, beta), chain_reference, v, h0, slots, o, nan)
    return o, final, slots


@pytest.mark.parametrize("segment_len", [64, 128])
def test_exact_chain_where_a_head_does_not_decay(segment_len, gen):
    """g = 0 in one head: no warm-up reaches τ, every boundary chains exactly (M)."""
    case = packed_case(gen, gates="mixed")
    o, final, slots = run_split(*case, segment_len)
    o_ref, ht_ref = unsplit(*case)
    chained = slots.start[1:] < slots.end[1:]
    assert chained.any() and torch.equal(slots.exact[1:], chained.int())
    assert relative_error(o, o_ref) <= 1e-10 and relative_error(final, ht_ref) <= 1e-10


def test_shortcut_where_every_head_decays(gen):
    """Every head decays by ≈ 0.2 a token: one chunk of warm-up (decay ≈ −12.8) reaches τ = −10, no
    M is formed, and the error is what the dropped e^{-12.8} contribution allows; τ = −20 takes two
    chunks and drops only e^{-25.6} (float64 throughout, so the dropped part is what shows)."""
    q, k, v, g, beta, h0, cu = case = packed_case(gen)
    g.copy_(-0.2 + 0.01 * torch.randn(g.shape, generator=gen, dtype=g.dtype))
    o_ref, ht_ref = unsplit(*case)
    errors = []
    for tau, chunks in ((-10.0, 1), (-20.0, 2)):
        o, final, slots = run_split(*case, 128, tau=tau)
        chained = slots.start[1:] < slots.end[1:]
        assert chained.any() and not slots.exact.any()
        window = (slots.start - slots.window_start)[1:]
        assert torch.equal(window[chained], torch.full_like(window[chained], 64 * chunks))
        errors.append(max(relative_error(o, o_ref), relative_error(final, ht_ref)))
    assert 1e-10 < errors[0] <= 1e-4 and errors[1] < errors[0] / 100


def test_expanding_transitions_are_chained_exactly(gen):
    """β ‖k‖² > 2 somewhere (unnormalised k): the shortcut's bound does not hold, so it is refused."""
    q, k, v, g, beta, h0, cu = packed_case(gen)
    k = 2 * k
    assert not bool(non_expansive(k, beta).all())
    o, final, slots = run_split(q, k, v, g, beta, h0, cu, 128)
    o_ref, ht_ref = unsplit(q, k, v, g, beta, h0, cu)
    assert torch.equal(slots.exact[1:], (slots.start[1:] < slots.end[1:]).int())
    assert relative_error(o, o_ref) <= 1e-10 and relative_error(final, ht_ref) <= 1e-10


def test_windows_longer_than_allowed_fall_back_to_the_chain(gen):
    case = packed_case(gen)
    _, _, slots = run_split(*case, 128, tau=-1e6, max_warmup_chunks=2)
    assert torch.equal(slots.exact[1:], (slots.start[1:] < slots.end[1:]).int())


def test_slots_cover_every_token_once(gen):
    """Slots of each sequence in order, clipped to it; the window before a slot lies in its sequence."""
    *_, cu = packed_case(gen)
    g = torch.full((int(cu[-1]), 4), -1.0, dtype=torch.float64)
    k = F.normalize(torch.randn(int(cu[-1]), 2, 16, generator=gen, dtype=torch.float64), dim=-1)
    beta = torch.rand(int(cu[-1]), 4, generator=gen, dtype=torch.float64)
    slots = plan_slots(cu, log2_gate(g, cu), chunk_contracts(k, beta, cu), Split(128, 6))
    covered = torch.zeros(int(cu[-1]), dtype=torch.int32)
    for a, b in zip(slots.start.flatten().tolist(), slots.end.flatten().tolist()):
        covered[a:b] += 1
    assert torch.equal(covered, torch.ones_like(covered))
    assert (slots.window_start <= slots.start).all() and (slots.window_start >= cu[:-1]).all()


def test_only_the_windows_transitions_are_checked(gen):
    """An expanding transition matters only inside a warm-up window: just after a boundary it
    changes nothing, just before one that boundary is chained exactly."""
    q, k, v, g, beta, h0, cu = case = packed_case(gen)
    g.copy_(-0.2 + 0.01 * torch.randn(g.shape, generator=gen, dtype=g.dtype))
    _, _, slots = run_split(*case, 128)
    assert not slots.exact.any()
    b = int(slots.start[1, 0])  # the first boundary of the long sequence
    beta[b + 5, 1] = 3.0
    assert not run_split(q, k, v, g, beta, h0, cu, 128)[2].exact.any()
    beta[b - 5, 1] = 3.0
    o, final, slots = run_split(q, k, v, g, beta, h0, cu, 128)
    assert slots.exact[1, 0] == 1 and int(slots.exact.sum()) == 1
    o_ref, ht_ref = unsplit(q, k, v, g, beta, h0, cu)
    assert relative_error(o, o_ref) <= 1e-4 and relative_error(final, ht_ref) <= 1e-4


def test_an_empty_sequence_ends_in_its_initial_state(gen):
    """A length-0 sequence (the op's argument check refuses one, but not during graph capture): all
    its slots are empty and its final state is slot 0's start state, h0; the others are unchanged."""
    lengths = [450, 0, 63, 200]
    q, k, v, g, beta, h0, cu = packed_case(gen, lengths)
    o, final, slots = run_split(q, k, v, g, beta, h0, cu, 128)
    assert slots.final_row[:, 1].tolist() == [1] + [-1] * (slots.final_row.shape[0] - 1)
    assert torch.equal(final[1], h0[1])
    kept = [0, 2, 3]
    o_ref, ht_ref = unsplit(q, k, v, g, beta, h0[kept], torch.tensor([0, 450, 513, 713], dtype=torch.int32))
    assert relative_error(o, o_ref) <= 1e-10 and relative_error(final[kept], ht_ref) <= 1e-10


def test_plan_outputs_for_the_passes(gen):
    """transition_start opens a range only at exact slots, whose M goes to row p·N + n (nowhere
    elsewhere); final_row sends the last non-empty slot's end state to row n, no other slot's."""
    q, k, v, g, beta, h0, cu = packed_case(gen, gates="mixed")
    slots = plan_slots(cu, log2_gate(g, cu), chunk_contracts(k, beta, cu), Split(128, 6))
    exact = slots.exact.bool()
    assert exact.any() and not exact.all()
    assert torch.equal(slots.transition_start[exact], slots.window_start[exact])
    assert torch.equal(slots.transition_start[~exact], slots.start[~exact])
    P, N = slots.start.shape
    ranges = torch.arange(P * N, dtype=torch.int32).view(P, N)
    assert torch.equal(slots.transition_row, torch.where(exact, ranges, -1))
    last = [-(-n // 128) - 1 for n in LENGTHS]
    assert slots.final_row.tolist() == [[n if p == last[n] else -1 for n in range(N)] for p in range(P)]
    assert all(x.dtype == torch.int32 for x in slots)


def test_chain_reference_is_the_recurrence(gen):
    """states[p] = warm[p] + M_p states[p − 1] where exact, warm[p] elsewhere; states[0] = h0."""
    P, N, HV, K = 4, 2, 3, 5
    warm = torch.randn(P * N, HV, K, K, generator=gen, dtype=torch.float64)
    transition = torch.randn(P * N, HV, K, K, generator=gen, dtype=torch.float64)
    exact = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.int32)
    h0 = torch.randn(N, HV, K, K, generator=gen, dtype=torch.float64)
    states = warm.clone()
    chain_reference(states, transition, exact, h0)
    for n in range(N):
        expected = h0[n]
        assert torch.equal(states[n], expected)
        for p in range(1, P):
            i = p * N + n
            expected = warm[i] + (transition[i] @ expected if exact[p, n] else 0)
            assert torch.allclose(states[i], expected, rtol=1e-12, atol=0)


def test_warmup_windows_are_limited_by_the_planner_kernel():
    from gdnc.emit.config import MAX_WINDOW_CHUNKS
    from gdnc.runtime.plan import SplitConfig

    SplitConfig(max_warmup_chunks=MAX_WINDOW_CHUNKS).check()
    Split(64, 1, max_warmup_chunks=MAX_WINDOW_CHUNKS)
    with pytest.raises(ValueError, match=f"max_warmup_chunks must be at most {MAX_WINDOW_CHUNKS}"):
        SplitConfig(max_warmup_chunks=MAX_WINDOW_CHUNKS + 1).check()
    with pytest.raises(ValueError, match=f"max_warmup_chunks in 1..{MAX_WINDOW_CHUNKS}"):
        Split(64, 1, max_warmup_chunks=MAX_WINDOW_CHUNKS + 1)


@pytest.mark.nvcc
@pytest.mark.parametrize("h_qk,h_v", [(2, 8), (16, 48), (16, 64)])
def test_cp_kernels_lower_and_build(h_qk, h_v, built):
    """cp_plan and cp_chain for sm_90a: no spills, the launch sizes they are written for (a thread
    per head in whole warps; four warps), and the chain's product on CUDA cores, not tensor cores."""
    from gdnc.emit.config import Heads

    reports = {name: built(name, Heads(h_qk, h_v))[1] for name in ("cp_plan", "cp_chain")}
    for name, rep in reports.items():
        assert rep.spill_stores == rep.spill_loads == rep.stack_frame == 0, f"{name}: register spills {rep}"
        assert not rep.wgmma and not rep.tma, name
    assert reports["cp_plan"].launch_threads == 32 * -(-h_v // 32)
    assert reports["cp_chain"].launch_threads == 128


def test_kept_buffers_grow_without_freeing():
    """A captured graph may still read an older, smaller buffer: growing keeps it alive."""
    from gdnc.runtime.buffers import _KEPT, kept_identity, kept_zeros

    _KEPT.clear()
    small = kept_zeros((3, 2), torch.float32, torch.device("cpu"))
    large = kept_zeros((5, 4), torch.float32, torch.device("cpu"))
    again = kept_zeros((2, 2), torch.float32, torch.device("cpu"))
    assert small.shape == (3, 2) and large.shape == (5, 4) and not small.any() and not large.any()
    assert len(_KEPT[("zeros", small.device, small.dtype)]) == 2 and again.data_ptr() == small.data_ptr()
    eye = kept_identity((2, 3, 4, 4), torch.float64, torch.device("cpu"))
    assert torch.equal(eye, torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4))
    assert kept_identity((1, 3, 4, 4), torch.float64, torch.device("cpu")).data_ptr() == eye.data_ptr()
