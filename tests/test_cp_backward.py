"""The backward's context parallelism (gdnc.runtime.cp_backward) on CPU, with references of its
kernels: the chunked forward over token ranges, and autograd of it over a range from a given start
state and end gradient as gdn_backward. Split, every gradient equals the unsplit backward's where the
chains are exact, and is within the gate shortcut's bound where they are not."""
import pytest
import torch

import gdnc
from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.chunked_form import chunked
from gdnc.reference.compare import relative_error
from gdnc.runtime.backward import state_slots
from gdnc.runtime.cp import chain_reference, plan_slots
from gdnc.runtime.cp_backward import chunk_rows, reverse_shortcuts, split_backward
from gdnc.runtime.plan import Split
from test_cp import chunk_contracts, log2_gate, packed_case

GDN = gdnc.get_variant("gdn")
GRADIENTS = ("q", "k", "v", "g", "beta")


def range_gradients(inputs, d_o, a, b, h0, d_end):
    """Autograd of the chunked forward over tokens [a, b) from state h0 ([HV, K, V]) with Σ d_o·o + Σ d_end·S_end:
    the gradients of the range's tokens by name, and of its start state."""
    leaves = {n: inputs[n][a:b].clone().requires_grad_(True) for n in GRADIENTS}
    start = h0.double().clone().requires_grad_(True)
    if b == a:
        return {n: leaves[n] for n in GRADIENTS}, d_end.double().clone()
    o, ht = chunked(GDN, *(leaves[n][None] for n in ("q", "k", "v")), g=leaves["g"][None], beta=leaves["beta"][None],
                    initial_state=start[None], output_final_state=True)
    grads = torch.autograd.grad((o, ht), [*leaves.values(), start], (d_o[a:b][None], d_end.double()[None]))
    return dict(zip(GRADIENTS, grads[:-1])), grads[-1]


def reference_kernels(inputs, d_o, calls):
    """The passes split_backward runs, as references counting their calls in ``calls``; the token
    gradients land in calls["grads"] (NaN until written)."""
    T, HV, V = inputs["v"].shape
    K = inputs["k"].shape[2]
    grads = calls["grads"] = {n: torch.full_like(inputs[n], float("nan")) for n in GRADIENTS}

    def summary(transitions, start, end, out, out_row):
        calls["summary"] += 1
        for a, b, row in zip(start.tolist(), end.tolist(), out_row.tolist()):
            state = torch.eye(K, dtype=torch.float64).expand(HV, K, K) if transitions else torch.zeros(HV, K, V)
            if b > a:
                v = torch.zeros_like(inputs["v"]) if transitions else inputs["v"]
                _, ht = chunked(GDN, inputs["q"][None, a:b], inputs["k"][None, a:b], v[None, a:b],
                                g=inputs["g"][None, a:b], beta=inputs["beta"][None, a:b],
                                initial_state=state[None].double(), output_final_state=True)
                state = ht[0]
            out[row] = state.to(out.dtype)

    def states(h0, start, end, chunk_row):
        calls["states"] += 1  # the reference backward recomputes its states from h0

    def local_gradient(start, end, out_row, out):
        calls["local_gradient"] += 1
        for a, b, row in zip(start.tolist(), end.tolist(), out_row.tolist()):
            _, out[row] = range_gradients(inputs, d_o, a, b, torch.zeros(HV, K, V), torch.zeros(HV, K, V))

    def backward(start, end, chunk_row, h0, dht, dh0_row, dh0):
        calls["backward"] += 1
        for r, (a, b, row) in enumerate(zip(start.tolist(), end.tolist(), dh0_row.tolist())):
            d_end = torch.zeros(HV, K, V, dtype=torch.float64) if dht is None else dht[r]
            token_grads, d_start = range_gradients(inputs, d_o, a, b, h0[r], d_end)
            for n in GRADIENTS:
                grads[n][a:b] = token_grads[n]
            if row >= 0:
                dh0[row] = d_start.to(dh0.dtype)

    return summary, states, local_gradient, backward


def split_gradients(case, d_o, dht, segment_len, tau=-10.0, reverse_exact=False):
    """split_backward with the reference kernels on ``case`` (test_cp.packed_case): the token gradients by
    name, dh0, the slots and the reverse chain's shortcuts (none with ``reverse_exact``)."""
    q, k, v, g, beta, h0, cu = case
    inputs = dict(q=q, k=k, v=v, g=g, beta=beta)
    HV, K, V = h0.shape[1:]
    split = Split(segment_len, -(-int(cu[-1]) // segment_len), tau=tau)
    l2, contracts = log2_gate(g, cu), chunk_contracts(k, beta, cu)
    slots = plan_slots(cu, l2, contracts, split)
    shortcut = reverse_shortcuts(cu, l2, contracts, slots.start, slots.end, split.window_limits()[1])
    if reverse_exact:
        shortcut = torch.zeros_like(shortcut)
    calls = {"summary": 0, "states": 0, "local_gradient": 0, "backward": 0}
    nan = lambda *shape, dt: torch.full(shape, float("nan"), dtype=dt)  # noqa: E731  every buffer read must be written
    dh0 = split_backward(*reference_kernels(inputs, d_o, calls), chain_reference, slots, shortcut,
                         chunk_rows(cu, state_slots(cu), slots.start), h0, dht, (HV, K, V), nan, want_dh0=True)
    assert {n: calls[n] for n in ("summary", "states", "local_gradient", "backward")} == \
        {"summary": 2, "states": 1, "local_gradient": 1, "backward": 1}
    return calls["grads"], dh0, slots, shortcut


def unsplit_gradients(case, d_o, dht):
    """The token gradients by name and dh0 of every sequence's backward in one range."""
    q, k, v, g, beta, h0, cu = case
    inputs = dict(q=q, k=k, v=v, g=g, beta=beta)
    HV, K, V = h0.shape[1:]
    grads = {n: torch.empty_like(inputs[n]) for n in GRADIENTS}
    dh0 = torch.empty_like(h0)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        d_end = torch.zeros(HV, K, V) if dht is None else dht[n]
        token_grads, dh0[n] = range_gradients(inputs, d_o, a, b, h0[n], d_end)
        for name in GRADIENTS:
            grads[name][a:b] = token_grads[name]
    return grads, dh0


def worst_error(split, unsplit):
    (grads, dh0), (ref, ref_dh0) = split, unsplit
    return max([relative_error(grads[n], ref[n]) for n in GRADIENTS] + [relative_error(dh0, ref_dh0)])


@pytest.mark.parametrize("segment_len", [64, 192])
@pytest.mark.parametrize("with_dht", [False, True])
def test_split_backward_equals_the_unsplit_backward(segment_len, with_dht, gen):
    """Sequences of 450, 1, 63 and 200 tokens in slots of 64 or 192: empty slots past each sequence's
    end, a length-1 sequence, a head without decay beside one at −30 a token, so that no shortcut
    holds and both chains run exactly: every gradient and dh0 as the unsplit backward's (float64
    throughout: the chains run in h0's dtype)."""
    case = packed_case(gen, gates="mixed")
    d_o = torch.randn(case[2].shape, generator=gen, dtype=torch.float64)
    dht = torch.randn(case[5].shape, generator=gen, dtype=torch.float64) if with_dht else None
    *split, slots, shortcut = split_gradients(case, d_o, dht, segment_len)
    assert not shortcut.any() and slots.exact[1:].bool().equal(slots.start[1:] < slots.end[1:])
    assert worst_error(split, unsplit_gradients(case, d_o, dht)) < 1e-10


def test_shortcuts_where_every_head_decays(gen):
    """Every head decays by ≈ 0.2 a token, in slots of one chunk. At τ = −10 the forward warms each slot
    up over the chunk before it (≈ −12.8), and the reverse chain drops the Mᵀ of every slot of 63 or 64
    tokens (not those of 1 and 8): each shortcut changes the gradients by about what its dropped
    e^{-12.8} allows, the reverse chain's alone measurably. At τ = −20 no chunk decays enough: both
    chains run exactly and the gradients are the unsplit ones."""
    case = packed_case(gen)
    case[3].copy_(-0.2 + 0.01 * torch.randn(case[3].shape, generator=gen, dtype=torch.float64))
    d_o = torch.randn(case[2].shape, generator=gen, dtype=torch.float64)
    dht = torch.randn(case[5].shape, generator=gen, dtype=torch.float64)
    unsplit = unsplit_gradients(case, d_o, dht)
    *split, slots, shortcut = split_gradients(case, d_o, dht, 64, tau=-10.0)
    assert torch.equal(shortcut, slots.end - slots.start >= 60) and not slots.exact.any()
    *reverse_exact, _, _ = split_gradients(case, d_o, dht, 64, tau=-10.0, reverse_exact=True)
    assert 1e-10 < worst_error(split, unsplit) <= 1e-4
    assert 1e-10 < worst_error(split, reverse_exact) <= 1e-4  # what the reverse chain's shortcut alone changes
    *exact, slots, shortcut = split_gradients(case, d_o, dht, 64, tau=-20.0)
    assert not shortcut.any() and torch.equal(slots.exact[1:].bool(), slots.start[1:] < slots.end[1:])
    assert worst_error(exact, unsplit) < 1e-10


def test_reverse_shortcuts_need_decay_and_contraction_in_every_head(gen):
    """A slot is dropped from the reverse chain only if it has tokens, every head decays by τ or more
    over it, and every chunk of it contracts (β‖k‖² ≤ 2)."""
    q, k, v, g, beta, h0, cu = packed_case(gen)
    g.fill_(-1.0)  # 64 tokens decay by −64
    split = Split(128, 6)
    contracts = chunk_contracts(k, beta, cu)
    slots = plan_slots(cu, log2_gate(g, cu), contracts, split)
    tau2 = split.window_limits()[1]
    every = reverse_shortcuts(cu, log2_gate(g, cu), contracts, slots.start, slots.end, tau2)
    short = (slots.end - slots.start) * 1.0 >= 10.0  # a slot decays by its length here
    assert torch.equal(every, (slots.end > slots.start) & short)
    g[:, 1] = 0.0  # one head without decay
    assert not reverse_shortcuts(cu, log2_gate(g, cu), contracts, slots.start, slots.end, tau2).any()
    g.fill_(-1.0)
    expanding = chunk_contracts(2 * k, beta, cu)  # β‖k‖² up to 4 somewhere in most chunks
    assert (reverse_shortcuts(cu, log2_gate(g, cu), expanding, slots.start, slots.end, tau2) <= every).all()
    assert not torch.equal(reverse_shortcuts(cu, log2_gate(g, cu), expanding, slots.start, slots.end, tau2), every)


def test_slot_chunk_rows(gen):
    """A slot's first chunk state sits where the unsplit states pass puts that chunk (cu[n] // C + n +
    its chunk index in the sequence)."""
    *_, cu = packed_case(gen)
    start = plan_slots(cu, torch.zeros(int(cu[-1]), 4), torch.ones(int(cu[-1]), 4), Split(128, 6)).start
    rows = chunk_rows(cu, state_slots(cu), start)
    for n, a in enumerate(cu[:-1].tolist()):
        for p in range(6):
            s = int(start[p, n])
            assert rows[p, n] == a // CHUNK_SIZE + n + (s - a) // CHUNK_SIZE
