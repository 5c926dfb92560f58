"""Random inputs for any recurrence, and per-name errors between two executors (outputs and gradients)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from gdnc.ir.canonical import classify
from gdnc.ir.recurrence import Recurrence

GATE_MODES = ("normal", "strong", "zero")


@dataclasses.dataclass
class Case:
    """One call's arguments: q, k, v, the recurrence's inputs, h0 and cu_seqlens."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    inputs: dict[str, torch.Tensor]
    initial_state: torch.Tensor | None
    cu_seqlens: torch.Tensor | None

    def leaves(self) -> dict[str, torch.Tensor]:
        """Every differentiable argument by name."""
        out = {"q": self.q, "k": self.k, "v": self.v, **self.inputs}
        if self.initial_state is not None:
            out["h0"] = self.initial_state
        return out


def random_case(rec: Recurrence, *, T: int, B: int = 1, H: int = 2, HV: int = 4, K: int = 8, V: int = 12,
                seqlens: list[int] | None = None, h0: bool = True, gates: str = "normal",
                dtype=torch.float64, device="cpu", generator: torch.Generator | None = None) -> Case:
    """Fresh random inputs in FLA's layouts: q, k, extra keys L2-normalised; decay logs by ``gates``:
    "normal" logsigmoid(randn), "strong" about −30 per token, "zero" exactly 0; other inputs
    (β-like) sigmoid(randn). With ``seqlens``, B = 1 and T = sum(seqlens) (varlen)."""
    if gates not in GATE_MODES:
        raise ValueError(f"gates must be one of {GATE_MODES}, got {gates!r}")
    form = classify(rec)
    decay_names = {s.name for s in form.log_decay.free_symbols}
    if form.log_decay_vector is not None:
        decay_names |= {s.name for s in form.log_decay_vector.free_symbols}
    if seqlens is not None:
        B, T = 1, sum(seqlens)
    opts = dict(dtype=dtype, device=device)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, **opts)

    inputs = {}
    for spec in rec.signature.inputs:
        shape = spec.shape(B, T, H, HV, K, V)
        if spec.name in decay_names:
            x = {"normal": lambda: F.logsigmoid(randn(*shape)),
                 "strong": lambda: -30.0 + randn(*shape).clamp(-3, 3),
                 "zero": lambda: torch.zeros(shape, **opts)}[gates]()
        elif spec.kind == "key":
            x = F.normalize(randn(*shape), dim=-1)
        else:
            x = torch.sigmoid(randn(*shape))
        inputs[spec.name] = x
    N = B if seqlens is None else len(seqlens)
    cu = None
    if seqlens is not None:
        cu = torch.tensor([0, *torch.tensor(seqlens).cumsum(0).tolist()], dtype=torch.int64, device=device)
    return Case(q=F.normalize(randn(B, T, H, K), dim=-1), k=F.normalize(randn(B, T, H, K), dim=-1),
                v=randn(B, T, HV, V), inputs=inputs,
                initial_state=randn(N, HV, K, V) if h0 else None, cu_seqlens=cu)


def run_case(executor, rec: Recurrence, case: Case, **kwargs):
    """Call ``executor`` (gdnc.reference.recurrent, .chunked, ...) on a case; returns (o, final_state)."""
    return executor(rec, case.q, case.k, case.v, initial_state=case.initial_state, output_final_state=True,
                    cu_seqlens=case.cu_seqlens, **case.inputs, **kwargs)


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ in float64; NaN anywhere gives inf (NaN never passes)."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    denom = ref.norm().item()
    diff = (x - ref).norm().item()
    return diff / denom if denom > 0 else diff


def errors_by_name(rec: Recurrence, case: Case, executor, reference, *, seed: int = 0, **kwargs) -> dict[str, float]:
    """Relative errors of ``executor`` against ``reference`` for o, final_state and the gradient of a
    random linear loss with respect to every input, by name (``dq``, ``dg``, ``dh0``, ...)."""
    leaves = {name: x.detach().clone().requires_grad_(True) for name, x in case.leaves().items()}
    live = dataclasses.replace(case, q=leaves["q"], k=leaves["k"], v=leaves["v"],
                               inputs={n: leaves[n] for n in case.inputs}, initial_state=leaves.get("h0"))
    results = {}
    weights = None
    for label, fn, extra in (("test", executor, kwargs), ("ref", reference, {})):
        o, ht = run_case(fn, rec, live, **extra)
        if weights is None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            weights = [torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device) for x in (o, ht)]
        loss = sum((x.double() * w).sum() for x, w in zip((o, ht), weights))
        grads = torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)
        results[label] = {"o": o, "final_state": ht, **{f"d{n}": g for n, g in zip(leaves, grads)}}
    return {name: relative_error(results["test"][name], results["ref"][name]) for name in results["ref"]}
