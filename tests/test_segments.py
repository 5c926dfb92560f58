"""Context parallelism's math on CPU: chaining segment summaries is exact; the shortcut's bound holds."""
import pytest
import torch
import torch.nn.functional as F

import gdnc
from gdnc.reference import recurrent
from gdnc.reference.compare import random_case, relative_error, run_case
from gdnc.reference.segments import (chained_states, segment_summary, segmented, segmented_gradients,
                                     shortcut_bound, split)

VARIANTS = [n for n in gdnc.variants() if gdnc.classify(gdnc.get_variant(n)).decay != "per-V"]


def test_split():
    segs = split([0, 5, 5 + 130], 64)
    assert [(s.sequence, s.start, s.end) for s in segs] == [(0, 0, 5), (1, 5, 69), (1, 69, 133), (1, 133, 135)]
    with pytest.raises(ValueError, match="segment_len must be >= 1"):
        split([0, 4], 0)


@pytest.mark.parametrize("segment_len", [64, 100, 192])
@pytest.mark.parametrize("name", VARIANTS)
def test_segmented_equals_reference(name, segment_len, gen):
    """One long and several short sequences, h0 and final state: exact to float64 rounding."""
    rec = gdnc.get_variant(name)
    case = random_case(rec, T=0, seqlens=[450, 1, 63, 200], generator=gen)
    o_ref, ht_ref = run_case(recurrent, rec, case)
    o, ht = run_case(lambda *a, **kw: segmented(*a, segment_len=segment_len, chunk_size=32, **kw), rec, case)
    assert relative_error(o, o_ref) <= 1e-10 and relative_error(ht, ht_ref) <= 1e-10


def test_zero_decay_needs_the_exact_chain(gen):
    """g = 0: the transition M is far from zero, so dropping it (the shortcut) would be wrong."""
    rec = gdnc.get_variant("gdn")
    case = random_case(rec, T=128, gates="zero", generator=gen)
    t = {n: x for n, x in case.inputs.items()}
    _, m = segment_summary(rec, case.q[:, 64:], case.k[:, 64:], case.v[:, 64:], {n: x[:, 64:] for n, x in t.items()})
    assert m.abs().max() > 1e-3  # the start state still reaches the end: M cannot be dropped
    assert shortcut_bound(case.k, case.inputs["beta"], case.inputs["g"][0, 64:].T) == pytest.approx(1.0)


def test_shortcut_bound_holds_under_strong_decay(gen):
    """With ‖k‖ = 1, 0 <= β <= 2 and strong decay, the start state's reach is below e^τ."""
    rec = gdnc.get_variant("gdn")
    case = random_case(rec, T=128, gates="strong", generator=gen)
    case.inputs["beta"] = 2 * case.inputs["beta"]
    q, k, v = (x[:, 64:] for x in (case.q, case.k, case.v))
    inputs = {n: x[:, 64:] for n, x in case.inputs.items()}
    s_ext, m = segment_summary(rec, q, k, v, inputs)
    bound = shortcut_bound(k, inputs["beta"], inputs["g"][0].T)
    assert bound is not None and bound < 1e-100
    h = torch.randn(m.shape[0], m.shape[-1], v.shape[-1], dtype=torch.float64, generator=gen)
    reach = (m @ h).norm(dim=(-2, -1)) / h.norm(dim=(-2, -1))
    assert (reach <= bound).all()
    starts, _ = chained_states([(s_ext, m)], None)
    assert torch.equal(starts[0], torch.zeros_like(s_ext))


def test_shortcut_refused_when_its_assumptions_fail(gen):
    k = F.normalize(torch.randn(1, 10, 2, 8, dtype=torch.float64, generator=gen), dim=-1)
    beta = torch.rand(1, 10, 4, dtype=torch.float64, generator=gen)
    tail = -torch.ones(4, 10, dtype=torch.float64)
    assert shortcut_bound(k, beta, tail) == pytest.approx(torch.e ** -10)
    assert shortcut_bound(2 * k, beta, tail) is None         # ‖k‖ = 2: β ‖k‖² > 2 somewhere
    assert shortcut_bound(k, 3 * beta + 0.1, tail) is None   # β > 2 somewhere
    assert shortcut_bound(k, -beta, tail) is None            # β < 0: I − β k kᵀ expands


@pytest.mark.parametrize("segment_len", [64, 160])
@pytest.mark.parametrize("name", ["gdn", "delta_rule", "gla"])
def test_backward_chained_through_transposed_transitions_is_exact(name, segment_len, gen):
    """The backward split (§5): each segment's state gradient from its own outputs, chained in reverse
    with Mᵀ, then each segment's gradients from its chained dS_end, equals autograd of the unsplit
    token-by-token reference — varlen with a length-1 sequence, h0 and a final-state gradient."""
    rec = gdnc.get_variant(name)
    case = random_case(rec, T=0, seqlens=[400, 1, 130], generator=gen)
    leaves = case.leaves()
    d_o = torch.randn(case.v.shape, dtype=torch.float64, generator=gen)
    d_final = torch.randn(3, *case.initial_state.shape[1:], dtype=torch.float64, generator=gen)
    live = {n: x.detach().clone().requires_grad_(True) for n, x in leaves.items()}
    o, ht = recurrent(rec, live["q"], live["k"], live["v"], initial_state=live["h0"], output_final_state=True,
                      cu_seqlens=case.cu_seqlens, **{n: live[n] for n in case.inputs})
    expected = dict(zip(live, torch.autograd.grad((o * d_o).sum() + (ht * d_final).sum(), list(live.values()))))
    got = segmented_gradients(rec, case.q, case.k, case.v, d_o, segment_len=segment_len, d_final=d_final,
                              initial_state=case.initial_state, cu_seqlens=case.cu_seqlens, chunk_size=32,
                              **case.inputs)
    got["h0"] = got.pop("initial_state")
    for name_ in expected:
        assert relative_error(got[name_], expected[name_]) <= 1e-10, name_
