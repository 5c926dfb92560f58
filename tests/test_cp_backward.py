"""The backward's context parallelism (gdnc.runtime.cp_backward) on CPU, with references of its
kernels: the chunked forward over token ranges, and autograd of it over a range from a given start
state and end gradient as gdn_backward. Split, every gradient equals the unsplit backward's."""
import pytest
import torch

import gdnc
from gdnc.ir.program import CHUNK_SIZE
from gdnc.reference.chunked_form import chunked
from gdnc.reference.compare import relative_error
from gdnc.runtime.backward import state_slots
from gdnc.runtime.cp import chain_reference
from gdnc.runtime.cp_backward import backward_slots, chunk_rows, split_backward
from test_cp import packed_case

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


@pytest.mark.parametrize("segment_len", [64, 192])
@pytest.mark.parametrize("with_dht", [False, True])
def test_split_backward_equals_the_unsplit_backward(segment_len, with_dht, gen):
    """Sequences of 450, 1, 63 and 200 tokens in slots of 64 or 192: empty slots past each sequence's
    end, a length-1 sequence, a head without decay beside one at −30 a token; every gradient and
    dh0 as the unsplit backward's, to fp32 (the chains run in fp32)."""
    q, k, v, g, beta, h0, cu = packed_case(gen, gates="mixed")
    inputs = dict(q=q, k=k, v=v, g=g, beta=beta)
    d_o = torch.randn(v.shape, generator=gen, dtype=torch.float64)
    dht = torch.randn(h0.shape, generator=gen, dtype=torch.float64) if with_dht else None
    N, (HV, K, V) = cu.numel() - 1, h0.shape[1:]
    expected = {n: torch.empty_like(inputs[n]) for n in GRADIENTS}
    expected_dh0 = torch.empty_like(h0)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        token_grads, expected_dh0[n] = range_gradients(inputs, d_o, a, b, h0[n],
                                                       torch.zeros(HV, K, V) if dht is None else dht[n])
        for name in GRADIENTS:
            expected[name][a:b] = token_grads[name]

    calls = {"summary": 0, "states": 0, "local_gradient": 0, "backward": 0}
    start, end = backward_slots(cu, segment_len, -(-int(cu[-1]) // segment_len))
    rows = chunk_rows(cu, state_slots(cu), start)
    nan = lambda *shape, dt: torch.full(shape, float("nan"), dtype=dt)  # noqa: E731  every buffer read must be written
    dh0 = split_backward(*reference_kernels(inputs, d_o, calls), chain_reference, start, end, rows, h0.float(),
                         None if dht is None else dht.float(), (HV, K, V), nan, want_dh0=True)
    assert {n: calls[n] for n in ("summary", "states", "local_gradient", "backward")} == \
        {"summary": 2, "states": 1, "local_gradient": 1, "backward": 1}
    for name in GRADIENTS:
        assert relative_error(calls["grads"][name], expected[name]) < 1e-5, name
    assert relative_error(dh0, expected_dh0) < 1e-5


def test_slots_and_their_chunk_rows(gen):
    """Slots cover each sequence in order, clipped to it and empty past its end; a slot's first chunk
    state sits where the unsplit states pass puts that chunk (cu[n] // C + n + chunk index)."""
    *_, cu = packed_case(gen)
    start, end = backward_slots(cu, 128, 6)
    rows = chunk_rows(cu, state_slots(cu), start)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        bounds = [(s, e) for s, e in zip(start[:, n].tolist(), end[:, n].tolist())]
        assert bounds == [(min(a + 128 * p, b), min(a + 128 * (p + 1), b)) for p in range(6)]
        for p, (s, e) in enumerate(bounds):
            if e > s:
                assert rows[p, n] == a // CHUNK_SIZE + n + (s - a) // CHUNK_SIZE
