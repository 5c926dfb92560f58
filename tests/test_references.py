"""The chunked form gdnc derives equals the token-by-token evaluation of the IR, in float64."""
import pytest
import torch

import gdnc
from gdnc.ir import I, Input, Key, Recurrence, S, diag, exp, hadamard, k, q, v
from gdnc.reference import chunked, recurrent
from gdnc.reference.compare import errors_by_name, random_case, run_case

TOL = 1e-10
VARIANTS = gdnc.variants()


def assert_close(errors, context):
    bad = {n: e for n, e in errors.items() if not e <= TOL}
    assert not bad, f"{context}: relative errors above {TOL}: {bad} (all: {errors})"


@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("T", [1, 63, 64, 1000])
@pytest.mark.parametrize("name", VARIANTS)
def test_chunked_equals_recurrent(name, T, chunk_size, gen):
    """GVA (HV = 2H), with h0, every output and gradient by name."""
    rec = gdnc.get_variant(name)
    case = random_case(rec, T=T, H=2, HV=4, generator=gen)
    assert_close(errors_by_name(rec, case, chunked, recurrent, chunk_size=chunk_size), f"{name} T={T} C={chunk_size}")


@pytest.mark.parametrize("name", VARIANTS)
def test_batch_without_initial_state(name, gen):
    rec = gdnc.get_variant(name)
    case = random_case(rec, T=70, B=3, H=1, HV=3, h0=False, generator=gen)
    assert_close(errors_by_name(rec, case, chunked, recurrent, chunk_size=32), name)


@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("name", VARIANTS)
def test_varlen(name, chunk_size, gen):
    """Packed sequences including length-1 ones; h0 and final state per sequence."""
    rec = gdnc.get_variant(name)
    case = random_case(rec, T=0, seqlens=[1, 63, 1, 130, 17], generator=gen)
    assert_close(errors_by_name(rec, case, chunked, recurrent, chunk_size=chunk_size), name)


def test_varlen_equals_separate_calls(gen):
    """Packing must not leak state between sequences: each sequence alone gives the same result."""
    rec = gdnc.get_variant("gdn")
    case = random_case(rec, T=0, seqlens=[5, 1, 40], generator=gen)
    o, ht = run_case(chunked, rec, case, chunk_size=16)
    bounds = case.cu_seqlens.tolist()
    for n, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
        o_n, ht_n = chunked(rec, case.q[:, bos:eos], case.k[:, bos:eos], case.v[:, bos:eos],
                            initial_state=case.initial_state[n:n + 1], output_final_state=True, chunk_size=16,
                            **{name: x[:, bos:eos] for name, x in case.inputs.items()})
        torch.testing.assert_close(o[:, bos:eos], o_n, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ht[n:n + 1], ht_n, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gates", ["strong", "zero"])
@pytest.mark.parametrize("name", [n for n in VARIANTS if gdnc.classify(gdnc.get_variant(n)).decay != "none"])
def test_strong_and_zero_decay(name, gates, gen):
    """g ≈ −30 a token (per channel too) and g = 0: finite and equal to the reference."""
    rec = gdnc.get_variant(name)
    case = random_case(rec, T=200, gates=gates, generator=gen)
    errors = errors_by_name(rec, case, chunked, recurrent, chunk_size=64)
    assert_close(errors, f"{name} gates={gates}")


@pytest.mark.parametrize("name", VARIANTS)
def test_chunked_form_never_exponentiates_a_positive_number(name, gen, monkeypatch):
    """With gates <= 0, every exp in the chunked form has an argument <= 0 (strong decay: no overflow)."""
    seen = []
    torch_exp = torch.exp

    def checked(x, *a, **kw):
        finite = x.detach()[torch.isfinite(x.detach())]
        seen.append(finite.max().item() if finite.numel() else float("-inf"))
        return torch_exp(x, *a, **kw)

    rec = gdnc.get_variant(name)
    case = random_case(rec, T=150, gates="strong", generator=gen)
    monkeypatch.setattr(torch.Tensor, "exp", checked)
    monkeypatch.setattr(torch, "exp", checked)
    o, ht = run_case(chunked, rec, case, chunk_size=64)
    monkeypatch.undo()
    assert torch.isfinite(o).all() and torch.isfinite(ht).all()
    if gdnc.classify(rec).decay != "none":
        assert seen, "the chunked form computed no exp at all: the check saw nothing"
    assert max(seen, default=0.0) <= 0.0, f"exp of a positive argument: max {max(seen)}"


def test_chunked_is_exact_not_tautological(gen):
    """The check can fail: a wrong chunked result (a perturbed gate) is caught."""
    rec = gdnc.get_variant("gdn")
    case = random_case(rec, T=64, generator=gen)
    o_ref, _ = run_case(recurrent, rec, case)
    case.inputs["g"] = case.inputs["g"] * 1.001
    o_bad, _ = run_case(chunked, rec, case, chunk_size=16)
    assert ((o_bad - o_ref).norm() / o_ref.norm()).item() > TOL


def _custom_recurrences():
    """Recurrences written here, not in the library: new write, read-before, mixed decays, own keys."""
    g, beta, h = Input("g"), Input("beta"), Input("h")
    w = Input("w", channel="V")
    a = Input("a", channel="K")
    p = Key("p")
    return [
        Recurrence("gdn_read_before_gated_write", exp(g) * (I - beta * k * k.T) * S + k * hadamard(w, v).T,
                   S.T * q, read="before"),
        Recurrence("two_gates", exp(g + h) * (I - beta * k * p.T) * S + beta * k * v.T, S.T * q),
        Recurrence("kda_plus_scalar", exp(g) * (I - beta * k * k.T) * diag(exp(a)) * S + k * v.T, S.T * p),
        Recurrence("hard_delta", (I - k * k.T) * S + k * v.T, S.T * q),
    ]


@pytest.mark.parametrize("rec", _custom_recurrences(), ids=lambda r: r.name)
def test_custom_recurrence(rec, gen):
    form = gdnc.classify(rec)
    assert form.transition.startswith("rank-1")
    for T, seqlens in ((65, None), (0, [1, 64, 30])):
        case = random_case(rec, T=T, seqlens=seqlens, generator=gen)
        assert_close(errors_by_name(rec, case, chunked, recurrent, chunk_size=16), rec.name)


def test_per_v_decay_runs_recurrent_and_refuses_chunked_with_reason(gen):
    w = Input("w", channel="V")
    rec = Recurrence("per_v", S * diag(exp(w)) + k * v.T, S.T * q)
    assert gdnc.classify(rec).decay == "per-V"
    case = random_case(rec, T=10, generator=gen)
    o, ht = run_case(recurrent, rec, case)
    assert torch.isfinite(o).all()
    with pytest.raises(gdnc.UnsupportedRecurrence, match="per-V decay"):
        run_case(chunked, rec, case)
