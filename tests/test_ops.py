"""The op on a machine without a GPU: FLA's signature, the reference fallback said once, the checks."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import gdnc
from gdnc.check import kernel_vs_reference


def inputs(T=70, H=2, HV=4, K=64, V=64, dtype=torch.bfloat16, N=1):
    q = F.normalize(torch.randn(1, T, H, K), dim=-1).to(dtype)
    k = F.normalize(torch.randn(1, T, H, K), dim=-1).to(dtype)
    v = torch.randn(1, T, HV, V).to(dtype)
    return q, k, v, F.logsigmoid(torch.randn(1, T, HV)), torch.rand(1, T, HV), torch.randn(N, HV, K, V)


def test_cpu_call_falls_back_to_the_reference_and_says_so_once():
    """A FallbackWarning says why, once per reason and call site (Python's default warning filter)."""
    from gdnc.runtime.ops import FallbackWarning

    q, k, v, g, beta, h0 = inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(2):
            o, ht = gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert [str(w.message) for w in caught] == ["gdnc: no CUDA tensors; using the chunked reference"]
    assert caught[0].category is FallbackWarning and caught[0].filename == __file__
    assert o.dtype == torch.bfloat16 and o.shape == (1, 70, 4, 64)
    assert ht.dtype == torch.float32 and ht.shape == (1, 4, 64, 64)
    o2, ht2 = gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0)
    assert ht2 is None and torch.equal(o, o2)


def test_kernel_vs_reference_measures_the_fallback():
    """The GPU tests' measuring function, run on CPU (where the op is the fp32 chunked reference)."""
    q, k, v, g, beta, h0 = inputs(N=2)
    cu = torch.tensor([0, 1, 70])
    o, ht, err, yard = kernel_vs_reference(gdnc.get_variant("gdn"), q, k, v, g, beta, h0, cu)
    assert err["o"] < 1e-2 and err["final_state"] < 1e-5  # fp32 reference, bf16 output
    assert 0 < yard["o"] < 1e-2 and 0 < yard["final_state"] < 1e-2


def test_l2norm_in_kernel_normalises_q_and_k():
    q, k, v, g, beta, _ = inputs()
    o1, _ = gdnc.chunk_gated_delta_rule(q * 3, k * 5, v, g, beta, use_qk_l2norm_in_kernel=True)
    o2, _ = gdnc.chunk_gated_delta_rule(q, k, v, g, beta)
    torch.testing.assert_close(o1.float(), o2.float(), atol=3e-2, rtol=3e-2)


def test_bad_arguments_name_themselves():
    q, k, v, g, beta, _ = inputs()
    with pytest.raises(ValueError, match=r"beta must be \[B, T, HV\]"):
        gdnc.chunk_gated_delta_rule(q, k, v, g, beta[..., :2])
    with pytest.raises(TypeError, match="g must be a torch.Tensor"):
        gdnc.chunk_gated_delta_rule(q, k, v, None, beta)


def test_prepare_finds_every_chunk_from_the_offsets():
    """gdn_prepare's slot arithmetic (its template, in Python): over the T // C + N slots, slot s
    goes to the last sequence n with cu[n] // C + n <= s, as chunk s − cu[n] // C − n; every chunk of
    every sequence gets exactly one slot, a slot without a chunk starts at or past its sequence's
    end (so it writes nothing), and no slot reads past one chunk beyond the tokens."""
    import math

    from gdnc.ir.program import CHUNK_SIZE

    C = CHUNK_SIZE
    for lengths in ([1], [64], [63], [65, 1, 63], [1000, 1, 2000, 64, 130], [128, 129, 127], [0, 5, 0],
                    [1] * 300, [64] * 7 + [1]):
        cu = [0] + torch.tensor(lengths).cumsum(0).tolist()
        N, tokens = len(lengths), cu[-1]
        found = []
        for slot in range(tokens // C + N):
            n = sum(cu[m] // C + m <= slot for m in range(N)) - 1
            t0 = cu[n] + (slot - cu[n] // C - n) * C
            assert t0 < tokens + C
            if t0 < cu[n + 1]:
                found.append((n, (t0 - cu[n]) // C))
        assert found == [(n, c) for n, length in enumerate(lengths) for c in range(math.ceil(length / C))]


class SignatureChecker:
    """Stands in for a compiled kernel on CPU: checks each call's positional arguments against the
    TileLang signature of the rendered source (count, tensor or scalar, dtype, rank, contiguity, fixed
    sizes, and every symbolic size bound to one value across the arguments); writes nothing but what
    ``effect`` (called with the arguments by name) writes."""

    def __init__(self, source: str, name: str, effect=None):
        from gdnc.emit.build import load_prim_func
        from gdnc.emit.cache import materialize

        self.name, self.func = name, load_prim_func(materialize(source, name, GDN.ir_hash))
        self.calls, self.effect = 0, effect

    def __call__(self, *args):
        from tvm import tirx

        params = list(self.func.params)
        assert len(args) == len(params), f"{self.name}: {len(args)} arguments for {len(params)} parameters"
        sizes = {}
        for param, arg in zip(params, args):
            where = f"{self.name}({param.name})"
            buffer = self.func.buffer_map.get(param)
            if buffer is None:
                expected = (int,) if str(param.dtype).startswith("int") else (int, float)
                assert isinstance(arg, expected) and not isinstance(arg, bool), f"{where}: {type(arg)}, {param.dtype}"
                continue
            assert isinstance(arg, torch.Tensor), f"{where}: {type(arg)}, expected a tensor"
            assert str(arg.dtype).removeprefix("torch.") == str(buffer.dtype), f"{where}: {arg.dtype}, {buffer.dtype}"
            assert arg.dim() == len(buffer.shape) and arg.is_contiguous(), f"{where}: {tuple(arg.shape)}, {buffer.shape}"
            for dim, size in zip(buffer.shape, arg.shape):
                if isinstance(dim, tirx.IntImm):
                    assert size == dim.value, f"{where}: {tuple(arg.shape)}, {buffer.shape}"
                else:
                    assert sizes.setdefault(dim.name, size) == size, f"{where}: {dim.name} = {size}, was {sizes[dim.name]}"
        self.calls += 1
        if self.effect is not None:
            names = [self.func.buffer_map[p].name if p in self.func.buffer_map else p.name for p in params]
            self.effect(dict(zip(names, args)))


def planner(split):
    """cp_plan's effect for a SignatureChecker: the slots of plan_slots, its torch reference (the
    backward split indexes tensors with them)."""
    from gdnc.runtime.cp import plan_slots

    def plan(args):
        slots = plan_slots(args["cu_seqlens"], args["l2_gate"], args["contracts"], split)
        for name, value in slots._asdict().items():
            args[name].copy_(value)
    return plan


GDN = gdnc.get_variant("gdn")


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("h0", [False, True])
def test_op_passes_every_kernel_its_parameters(split, varlen, h0):
    """run_forward, the op's kernel path, on CPU tensors with every kernel a SignatureChecker behind
    the registry's binding by name: each launch gets what the kernel's signature declares, in its order."""
    from gdnc.emit.cache import Kernel
    from gdnc.emit.config import Heads
    from gdnc.emit.registry import spec
    from gdnc.emit.render import render
    from gdnc.reference.problem import check_arguments
    from gdnc.runtime.buffers import output_allocator
    from gdnc.runtime.policy import Call, HeuristicPolicy
    from gdnc.runtime.plan import SplitConfig
    from gdnc.runtime.backward import run_backward
    from gdnc.runtime.forward import run_forward

    lengths = [130, 1, 500] if varlen else [631]
    T = sum(lengths)
    heads = Heads(2, 8)
    policy = HeuristicPolicy(split=SplitConfig(segment_len=256 if split else 0), forward={"block_v": 128})
    plan = policy.plan(Call(heads, T, len(lengths), 132))
    checkers = {name: SignatureChecker(render(GDN, name, heads, config), name) for name, config in plan.kernels().items()}
    kernels = {name: Kernel(spec(name), config, checkers[name]) for name, config in plan.kernels().items()}
    q, k, v, g, beta, state = inputs(T, 2, 8, 128, 128, N=len(lengths))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32) if varlen else None
    initial_state = state if h0 else None
    s = check_arguments(GDN.signature, q, k, v, scale=None, initial_state=initial_state, cu_seqlens=cu,
                        inputs={"g": g, "beta": beta})
    empty = output_allocator("cpu", poison=True)
    o, final, saved = run_forward(q, k, v, g, beta.float(), s, initial_state, True, cu, plan, kernels, empty)
    assert o.shape == v.shape and final.shape == (len(lengths), 8, 128, 128)
    launches = {name: checker.calls for name, checker in checkers.items()}
    assert launches == ({"gdn_prepare": 1, "gdn_forward": 3, "cp_plan": 1, "cp_chain": 1} if split else
                        {"gdn_prepare": 1, "gdn_forward": 1})
    # the backward's two launches, with and without dht and dh0
    backward = {role: SignatureChecker(render(GDN, name, heads, config), name,
                                       planner(plan.backward_split) if name == "cp_plan" else None)
                for role, (name, config) in plan.backward_kernels().items()}
    bound = {role: Kernel(spec(name), config, backward[role]) for role, (name, config) in plan.backward_kernels().items()}
    grads = run_backward(saved, torch.ones_like(o), final if h0 else None, s, bound, empty, want_dh0=h0,
                         split=plan.backward_split)
    assert (plan.backward_split is not None) == split
    assert {role: checker.calls for role, checker in backward.items()} == (
        {"states": 1, "backward": 1, "state_gradient": 1, "forward": 2, "plan": 1, "chain": 1} if split else
        {"states": 1, "backward": 1})
    assert grads.dq.shape == q.shape and grads.dk.shape == k.shape and grads.dv.shape == v.shape
    assert grads.dg.shape == grads.dbeta.shape == g.shape and (grads.dh0 is not None) == h0


def test_a_launch_binds_its_arguments_by_name():
    from gdnc.emit.cache import Kernel
    from gdnc.emit.registry import spec

    got = []
    chain = Kernel(spec("cp_chain"), None, lambda *args: got.append(args))
    chain(exact=3, initial_state=4, transition=2, states=1)
    assert got == [(1, 2, 3, 4)]
    with pytest.raises(TypeError, match=r"cp_chain: missing arguments \['exact'\], unknown arguments \['exactly'\]"):
        chain(states=1, transition=2, exactly=3, initial_state=4)


def test_gradients_vs_reference_measures_every_gradient_by_name():
    """gdnc.check.gradients_vs_reference (the GPU backward tests' and `gdnc check`'s measure), here on
    the CPU fallback: every output and gradient by name, near float64, the fallback reported, and two
    runs of the same call the same bits."""
    from gdnc.check import gradients_vs_reference

    q, k, v, g, beta, state = inputs(200, 2, 4, 16, 16, dtype=torch.float32, N=2)
    cu = torch.tensor([0, 77, 200])
    runs, err, yard, fallbacks = gradients_vs_reference(GDN, q, k, v, g, beta, state, cu, repeats=2)
    assert set(err) == set(yard) == {"o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0"}
    assert max(err.values()) < 1e-4 and fallbacks and "no CUDA tensors" in fallbacks[0]
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    _, err_no_final, _, _ = gradients_vs_reference(GDN, q, k, v, g, beta, None, cu, use_final=False)
    assert "dh0" not in err_no_final and err_no_final["dq"] < 1e-4


def test_l2_normalize_matches_f_normalize_and_keeps_only_its_result_and_a_norm():
    """use_qk_l2norm_in_kernel's normalisation: F.normalize's values and gradients (float64
    gradcheck, clamped rows included; bf16 to rounding), and its backward keeps the normalised rows
    themselves (the tensor the op saves anyway) and an fp32 norm a row, not an fp32 copy of x."""
    from gdnc.reference.compare import relative_error
    from gdnc.runtime.l2norm import l2_normalize

    x = torch.randn(3, 5, 2, 16, dtype=torch.float64)
    x[0, 0, 0] = 0.0  # a clamped row: F.normalize's gradient there is 1/eps, no projection
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(l2_normalize, (x[1:],))
    d = torch.randn_like(x)
    (ours,) = torch.autograd.grad(l2_normalize(x), x, d)
    (theirs,) = torch.autograd.grad(F.normalize(x, dim=-1), x, d)
    # to rounding, row by row: an element much smaller than its row's (a near cancellation) can differ
    # in more than its own last digits, and the clamped row is 1e11 times the others
    assert ((ours - theirs).norm(dim=-1) <= 1e-12 * theirs.norm(dim=-1)).all()
    xb = torch.randn(4, 70, 2, 128).bfloat16().requires_grad_(True)
    out = l2_normalize(xb)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), F.normalize(xb.float(), dim=-1), atol=4e-3)
    saved = out.grad_fn.saved_tensors
    assert saved[0].data_ptr() == out.data_ptr() and saved[1].dtype == torch.float32 and saved[1].shape[-1] == 1
    assert sum(t.numel() * t.element_size() for t in saved[1:]) <= 5 * xb.shape[:-1].numel()
    db = torch.randn_like(xb)
    (ours,) = torch.autograd.grad(out, xb, db)
    (theirs,) = torch.autograd.grad(F.normalize(xb.float(), dim=-1), xb, db.float())
    assert relative_error(ours, theirs) < 1e-2


def test_state_slots_follow_gdn_prepares_layout():
    """The backward's states rows: sequence n's chunk c at cu[n] // C + n + c, inside T // C + N rows,
    every chunk its own row (gdn_prepare's slot layout, test_prepare_finds_every_chunk_from_the_offsets)."""
    import math

    from gdnc.ir.program import CHUNK_SIZE
    from gdnc.runtime.backward import state_slots

    for lengths in ([1], [64, 65], [1000, 1, 2000, 64, 130], [63] * 9):
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        slots = state_slots(cu)
        assert slots.dtype == torch.int32 and slots.tolist() == [int(cu[n]) // CHUNK_SIZE + n for n in range(len(cu))]
        rows = [int(slots[n]) + c for n, length in enumerate(lengths) for c in range(math.ceil(length / CHUNK_SIZE))]
        assert len(set(rows)) == len(rows) and max(rows) < int(cu[-1]) // CHUNK_SIZE + len(lengths)
