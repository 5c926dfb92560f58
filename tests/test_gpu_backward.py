"""The generated backward on a Hopper GPU against float64 autograd (pytest -m gpu).

Every case differentiates a random linear loss of o and the final state through the op (its kernels:
no fallback allowed) and through the float64 chunked reference, and compares o, the final state
and every gradient by name. Yardstick: the same errors of the chunked reference run as the kernels
run it (operands rounded to the op's dtype, fp32 accumulation, autograd through the rounding); the
kernels may be at most FACTOR times as far from float64. Gradient buffers are poisoned (NaN) before
every run, inputs are fresh random each run.
"""
import os
import time

import pytest
import torch

import gdnc
from conftest import GPU_MARKS, offsets, write_gpu_report
from conftest import gpu_inputs as inputs
from gdnc.bench.shapes import BACKWARD_HEAD_CONFIGS
from gdnc.emit.config import Heads
from gdnc.check import gradients_vs_reference
from gdnc.runtime.plan import SplitConfig
from gdnc.runtime.policy import DEFAULT_POLICY, HeuristicPolicy

pytestmark = GPU_MARKS

FACTOR = 2.0
GDN = gdnc.get_variant("gdn")
RESULTS = []  # every checked case, written to $GDNC_GPU_REPORT_BACKWARD (JSON) when that is set
# forward and backward split into slots of 256 tokens (the default splits from 2048 tokens)
SPLIT_256 = HeuristicPolicy(split=SplitConfig(segment_len=256))
# the warp-specialised backward (not yet the op's default), unsplit and split
SPECIALISED = HeuristicPolicy(backward={"roles": "specialised"})
SPECIALISED_SPLIT_256 = HeuristicPolicy(split=SplitConfig(segment_len=256), backward={"roles": "specialised"})


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    write_gpu_report("GDNC_GPU_REPORT_BACKWARD", RESULTS)


def kernels_used() -> list:
    """Every (kernel, heads, config) these tests may load, to build on a machine without a GPU."""
    heads = [Heads(hq, hv) for hq, hv in BACKWARD_HEAD_CONFIGS] + [Heads(2, 4, dtype="float16")]
    return list(dict.fromkeys((kernel, h, config) for h in heads for policy in (DEFAULT_POLICY, SPECIALISED)
                              for kernel, config in policy.candidates(h)))


def check(q, k, v, g, beta, h0, cu=None, *, dht=True, l2norm=False, policy=None, repeat=False):
    """The op's outputs and gradients against float64, within FACTOR of the yardstick; returns both."""
    started = time.perf_counter()
    runs, err, yard, fallbacks = gradients_vs_reference(GDN, q, k, v, g, beta, h0, cu, use_final=dht, l2norm=l2norm,
                                                        policy=policy, repeats=2 if repeat else 1)
    assert not fallbacks, f"the op did not run the kernels: {fallbacks}"
    # the seconds a case takes (kernel loads, the op, both references): what plans the next device call
    RESULTS.append({"case": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "error": err, "yardstick": yard,
                    "seconds": round(time.perf_counter() - started, 1)})
    got = runs[0]
    for name in err:
        assert torch.isfinite(got[name]).all(), f"{name} has NaN/inf: an element was not written or overflowed"
        assert err[name] <= FACTOR * yard[name] + 1e-6, f"{name}: kernel {err[name]:.2e} vs yardstick {yard[name]:.2e}"
    if repeat:
        for name in got:
            assert torch.equal(got[name], runs[1][name]), f"{name} differs between two identical runs"
    return err, yard


@pytest.mark.parametrize("T", [1, 63, 64, 1000, 4096])
@pytest.mark.parametrize("h_qk,h_v", BACKWARD_HEAD_CONFIGS)
def test_backward_matches_float64(h_qk, h_v, T):
    check(*inputs(T, h_qk, h_v))


@pytest.mark.parametrize("h_qk,h_v", [(2, 4), (16, 32)])
def test_long_sequence(h_qk, h_v):
    check(*inputs(32768, h_qk, h_v))


@pytest.mark.parametrize("h_qk,h_v", [(2, 4), (16, 64)])
def test_varlen_with_length_one_sequences(h_qk, h_v):
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    check(*inputs(sum(lengths), h_qk, h_v, N=len(lengths)), cu=offsets(lengths))


@pytest.mark.parametrize("h_qk,h_v", [(2, 4), (16, 32)])
def test_split_backward_on_varlen(h_qk, h_v):
    """The backward split (gdnc.runtime.cp_backward) into slots of 256 tokens: sequences shorter than a
    slot, empty slots past each sequence's end, heads without decay beside heads at −30 a token."""
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    check(*inputs(sum(lengths), h_qk, h_v, N=len(lengths), gates="mixed"), cu=offsets(lengths), policy=SPLIT_256)


@pytest.mark.parametrize("dht", [True, False])
@pytest.mark.parametrize("h0", [True, False])
def test_initial_and_final_state_gradients_on_and_off(h0, dht):
    check(*inputs(1000, 4, 8, h0=h0), dht=dht)


@pytest.mark.parametrize("policy", [None, SPLIT_256], ids=["unsplit", "split"])
@pytest.mark.parametrize("gates", ["strong", "mixed"])
def test_decay_extremes(gates, policy):
    """g ≈ −30 a token in every head, or half the heads 0; split, the strong heads take both chains'
    gate shortcuts (gdnc.runtime.cp, cp_backward), the mixed ones neither."""
    check(*inputs(1000, 4, 8, gates=gates), policy=policy)


def test_expanding_transitions():
    """β up to 2 with ‖k‖ = 1.2: β‖k‖² up to 2.9, above 1."""
    check(*inputs(1000, 4, 8, beta_max=2.0, k_norm=1.2))


def test_fp16():
    check(*inputs(1000, 2, 4, dtype=torch.float16))


def test_qk_l2norm_in_kernel():
    q, k, v, g, beta, h0 = inputs(1000, 4, 8)
    check(q * 3, k * 0.5, v, g, beta, h0, l2norm=True)


def test_batch_of_dense_sequences():
    check(*inputs(1000, 4, 8, B=3, N=3))


@pytest.mark.parametrize("policy", [None, SPLIT_256], ids=["unsplit", "split"])
def test_gradients_are_bitwise_repeatable(policy):
    check(*inputs(2000, 4, 16), repeat=True, policy=policy)


@pytest.mark.parametrize("T", [1, 63, 64, 1000, 4096])
@pytest.mark.parametrize("h_qk,h_v", [(2, 4), (16, 32)])
def test_specialised_backward_matches_float64(h_qk, h_v, T):
    """BackwardConfig(roles="specialised"): the warp-specialised build, checked as the serial one is."""
    check(*inputs(T, h_qk, h_v), policy=SPECIALISED)


def test_specialised_backward_split_on_varlen():
    lengths = [1, 63, 1000, 1, 2000, 64, 130]
    check(*inputs(sum(lengths), 2, 4, N=len(lengths), gates="mixed"), cu=offsets(lengths), policy=SPECIALISED_SPLIT_256)


@pytest.mark.parametrize("policy", [SPECIALISED, SPECIALISED_SPLIT_256], ids=["unsplit", "split"])
def test_specialised_backward_is_bitwise_repeatable(policy):
    check(*inputs(2000, 4, 16), repeat=True, policy=policy)


def test_double_backward_is_refused():
    q, k, v, g, beta, h0 = inputs(128, 2, 4)
    q.requires_grad_(True)
    o, _ = gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(o.float().sum(), q, create_graph=True)
