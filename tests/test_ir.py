"""The IR: classification of the library and of written recurrences, refusals, hashes."""
import pytest
import sympy as sp

import gdnc
from gdnc.ir import (
    I,
    Input,
    Key,
    Recurrence,
    S,
    UnsupportedRecurrence,
    classify,
    diag,
    exp,
    hadamard,
    k,
    q,
    v,
)

EXPECTED_AXES = {
    "linear_attn": ("none", "identity"),
    "simple_gla": ("scalar", "identity"),
    "retention": ("head", "identity"),
    "gla": ("per-K", "identity"),
    "delta_rule": ("none", "rank-1 (same key)"),
    "gdn": ("scalar", "rank-1 (same key)"),
    "kda": ("per-K", "rank-1 (same key)"),
    "comba": ("scalar", "rank-1 (other key)"),
}


def test_library_lists_every_variant():
    assert set(gdnc.variants()) == set(EXPECTED_AXES)


@pytest.mark.parametrize("name", list(EXPECTED_AXES))
def test_classification(name):
    form = classify(gdnc.get_variant(name))
    assert (form.decay, form.transition) == EXPECTED_AXES[name]
    assert form.read == "after"


def test_gdn_canonical_form():
    form = classify(gdnc.get_variant("gdn"))
    assert sp.srepr(form.log_decay) == "TokenScalar('g', real=True)"
    assert sp.srepr(form.erase_coef) == "TokenScalar('beta', real=True)"
    assert form.erase_key == k and form.direction == k and form.read_vector == q
    assert gdnc.get_variant("gdn").inputs[0].name == "beta"
    assert [a.name for a in gdnc.get_variant("gdn").inputs] == ["beta", "g"]


def test_get_variant_unknown():
    with pytest.raises(ValueError, match="unknown variant 'nope'.*gdn"):
        gdnc.get_variant("nope")


def test_replace_makes_a_new_recurrence_with_its_own_hash():
    gdn = gdnc.get_variant("gdn")
    beta = Input("beta")
    mine = gdn.replace(name="mine", update=(I - beta * k * k.T) * S + beta * k * v.T)
    assert classify(mine).decay == "none"
    assert mine.ir_hash != gdn.ir_hash
    assert gdn.replace(name="renamed").ir_hash == gdn.ir_hash  # the hash is of the math only
    assert classify(gdnc.get_variant("gdn")).decay == "scalar"  # the original is untouched
    # gdn's description no longer applies to altered math; a new name alone keeps it
    assert mine.description == "altered from gdn"
    assert gdn.replace(name="renamed").description == gdn.description
    assert gdn.replace(update=mine.update, description="mine").description == "mine"


def test_signature_declares_layouts_and_log_gates():
    """The call's inputs as plain data: layouts, and which inputs are read only through exp()
    (log-space gates, <= 0): gdn's g, gla's per-K g, retention's per-head g; not β."""
    gdn, gla, retention = (gdnc.get_variant(n).signature for n in ("gdn", "gla", "retention"))
    assert [(s.name, s.layout, s.log_gate) for s in gdn.inputs] == [("beta", "[B, T, HV]", False),
                                                                     ("g", "[B, T, HV]", True)]
    assert gdn.ir_hash == gdnc.get_variant("gdn").ir_hash and gdn.text() == "beta [B, T, HV], g [B, T, HV]"
    assert [(s.layout, s.log_gate) for s in gla.inputs] == [("[B, T, HV, K]", True)]
    assert [(s.layout, s.log_gate) for s in retention.inputs] == [("[HV]", True)]
    assert gdnc.ir.Signature.from_dict(gdn.as_dict()) == gdn


g, beta, a = Input("g"), Input("beta"), Input("a", channel="K")
REFUSED = [
    ("decay not in log space", g * S + k * v.T, "not written in log space"),
    ("erase before decay", exp(g) * S - beta * k * k.T * S + beta * k * v.T, "before its decay"),
    ("decay after erase, per-K", diag(exp(a)) * (I - beta * k * k.T) * S + beta * k * v.T, "leftmost factor"),
    ("erase along another key", exp(g) * (I - beta * q * k.T) * S + beta * k * v.T, "leftmost factor is q"),
    ("rank-2 transition", (I - beta * k * k.T) * (I - beta * q * q.T) * S + k * v.T, "rank > 1"),
    ("two writes", S + k * v.T + q * v.T, "several write terms"),
    ("two-step DeltaProduct", (I - Input("b2") * Key("k2") * Key("k2").T) * (exp(g) * (I - beta * k * k.T) * S
                                                                          + beta * k * v.T)
     + Input("b2") * Key("k2") * Input("v2", channel="V").T, "the transition has rank > 1"),
    ("growing constant decay", sp.exp(sp.Rational(1, 2)) * S + k * v.T, r"grows the state \(its log, 1/2, is > 0\)"),
    ("no write", exp(g) * S, "no write term"),
    ("quadratic in S", S * S.T * S, "not linear in the state"),
    ("no state kept", k * v.T, "no term c\\*S"),
]


@pytest.mark.parametrize("label,update,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_unsupported_updates_are_refused_naming_the_term(label, update, message):
    with pytest.raises(UnsupportedRecurrence, match=message):
        classify(Recurrence("bad", update, S.T * q))


def test_unsupported_output_is_refused():
    with pytest.raises(UnsupportedRecurrence, match="output .* is not supported"):
        classify(Recurrence("bad", S + k * v.T, S.T * q + v))


def test_recurrence_checks_its_fields():
    with pytest.raises(TypeError, match="update must be a sympy matrix expression"):
        Recurrence("bad", 3, S.T * q)
    with pytest.raises(ValueError, match="update has shape"):
        Recurrence("bad", k * k.T, S.T * q)
    with pytest.raises(ValueError, match="read must be one of"):
        Recurrence("bad", S + k * v.T, S.T * q, read="during")


@pytest.mark.parametrize("update,message", [
    (exp(g) * (I - beta * k * k.T) * S + beta * k * v, r"in beta\*k\*v, k \(Kx1\) times v \(Vx1\) does not multiply"),
    (exp(g) * S + beta * k.T * v, r"k.T \(1xK\) times v \(Vx1\) does not multiply"),
    (exp(g) * S + hadamard(k, q) * v.T + v * k.T, r"the terms of .* differ in size"),
])
def test_a_mistyped_shape_is_refused_where_the_recurrence_is_made(update, message):
    """sympy does not check products and sums of symbolic sizes: the Recurrence does, naming the term."""
    with pytest.raises(ValueError, match=message):
        Recurrence("typo", update, S.T * q)


def test_input_declarations_are_checked():
    with pytest.raises(ValueError, match="reserved"):
        Input("k")
    with pytest.raises(ValueError, match="per="):
        Input("g", per="batch")
    with pytest.raises(ValueError, match="channel="):
        Input("g", channel="T")
    with pytest.raises(ValueError, match="Key name"):
        Key("q")


def test_show_prints_classification_and_chunked_form():
    from gdnc.ir.describe import describe

    text = describe(classify(gdnc.get_variant("kda")))
    assert "diag(exp(g))" in text and "per-K" in text and "M_ij" in text and "Σ_c" in text
    assert gdnc.get_variant("kda").ir_hash in text
