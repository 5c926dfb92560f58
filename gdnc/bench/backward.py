"""`gdnc bench --backward`: forward + backward through autograd, and the backward alone, for gdnc,
FlashQLA and FLA side by side in one process, on the backward shapes of anchors.md.

Every provider gets the same inputs (q, k L2-normalised bf16, v bf16, g = logsigmoid, β = sigmoid,
h0 fp32) and the same output gradients (do, dht). Times are CUDA-graph medians where the provider's
autograd path can be captured (events otherwise, said per cell). FLA runs with its backend dispatch
on and FlashQLA's backend off (FLA_FLASH_QLA=0): its Triton forward and, on this Triton, its TileLang
fix for the gated backward (anchors.md). Each shape reports the floor (FLOPs of the forward, state
and backward chunk programs at the measured GEMM rate; inputs and outputs once at the measured copy
bandwidth), the peak memory each provider allocates for one forward + backward, and gdnc's gradients
against FlashQLA's on the same inputs.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
from pathlib import Path

import torch

from gdnc.ir.program import CHUNK_SIZE

from . import roofline
from . import run as forward_bench
from .shapes import HEAD_DIM, Shape, backward_shapes, make_inputs, select
from .timing import measure_copy_bandwidth, measure_gemm_rate, time_calls

GRADIENTS = ("dq", "dk", "dv", "dg", "dbeta", "dh0")
LEAVES = ("q", "k", "v", "g", "beta", "initial_state")  # make_inputs' names of what is differentiated


PROVIDERS = ("gdnc", "FlashQLA", "FLA")


def providers(names=PROVIDERS) -> list[tuple[str, object, str]]:
    """(name, chunk_gated_delta_rule or None, the path that runs or why none does) of each of ``names``."""
    os.environ["FLA_FLASH_QLA"] = "0"  # read by fla when it registers its backends: set before the import
    found = []
    if "gdnc" in names:
        import gdnc

        found.append(("gdnc", gdnc.chunk_gated_delta_rule, "gdnc.chunk_gated_delta_rule (generated forward and backward)"))
    if "FlashQLA" in names:
        try:
            import flash_qla

            found.append(("FlashQLA", flash_qla.chunk_gated_delta_rule, f"flash_qla {flash_qla.__version__}, auto CP"))
        except Exception as error:
            found.append(("FlashQLA", None, f"import failed: {error}"))
    if "FLA" in names:
        try:
            import fla
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule

            found.append(("FLA", chunk_gated_delta_rule, f"fla {fla.__version__}, dispatch on, FLA_FLASH_QLA=0 "
                                                          "(Triton forward, TileLang-fixed gated backward)"))
        except Exception as error:
            found.append(("FLA", None, f"import failed: {error}"))
    return found


def inputs(shape: Shape, generator: torch.Generator) -> dict:
    """The forward bench's inputs (gdnc.bench.shapes.make_inputs) and the output gradients do, dht."""
    x = make_inputs(shape, generator)
    x["do"] = torch.randn(x["v"].shape, generator=generator, device="cuda").bfloat16()
    x["dht"] = torch.randn(x["initial_state"].shape, generator=generator, device="cuda")
    return x


def _autograd_step(fn, x: dict, retain: bool = False):
    """Leaves, and a function running forward + backward (or, with ``retain``, the backward alone of
    one forward kept): the gradients of sum(do·o) + sum(dht·ht) in q, k, v, g, beta, h0."""
    leaves = [x[n].detach().clone().requires_grad_(True) for n in LEAVES]

    def forward():
        q, k, v, g, beta, h0 = leaves
        return fn(q=q, k=k, v=v, g=g, beta=beta, initial_state=h0, output_final_state=True,
                  cu_seqlens=x["cu_seqlens"])

    if retain:
        outputs = forward()
        return lambda: torch.autograd.grad(outputs, leaves, (x["do"], x["dht"]), retain_graph=True)
    return lambda: torch.autograd.grad(forward(), leaves, (x["do"], x["dht"]))


@functools.lru_cache(maxsize=None)
def _macs() -> dict:
    """Tensor-core multiply-adds a chunk and value head of gdn's rewritten forward, state and backward programs."""
    from gdnc.ir.cost import cost
    from gdnc.ir.library import get_variant
    from gdnc.passes import compile_programs

    programs = compile_programs(get_variant("gdn"))
    return {name: cost(getattr(programs, name)).tc_macs for name in ("forward", "state", "backward")}


def floor(shape: Shape, gemm: float, copy: float) -> dict:
    """The floor of forward + backward and of the backward alone, in ms. The backward reads the
    forward's inputs and the gradients of its outputs and writes a gradient of every input."""
    macs = _macs()
    per_chunk = 2 * shape.chunks(CHUNK_SIZE) * shape.h_v  # FLOPs a multiply-add, over every chunk and value head
    forward_bytes = roofline.hbm_bytes(shape)  # inputs read, o and the final state written
    outputs_bytes = shape.tokens * shape.h_v * HEAD_DIM * roofline.BF16 + \
        shape.n_seqs * shape.h_v * HEAD_DIM * HEAD_DIM * roofline.FP32
    backward_bytes = forward_bytes + (forward_bytes - outputs_bytes)
    backward_flops = per_chunk * (macs["state"] + macs["backward"])
    bwd = max(backward_flops / gemm, backward_bytes / copy) * 1e3
    both = max((backward_flops + per_chunk * macs["forward"]) / gemm, (forward_bytes + backward_bytes) / copy) * 1e3
    return {"fwd_bwd_ms": both, "bwd_ms": bwd, "backward_flops": backward_flops}


def _rel(x, ref) -> float:
    x, ref = x.float(), ref.float()
    return ((x - ref).norm() / ref.norm()).item() if ref.norm() > 0 else (x - ref).norm().item()


def run_shape(shape: Shape, found: list, ceilings: dict, seed: int) -> dict:
    x = inputs(shape, torch.Generator(device="cuda").manual_seed(seed))
    record = {"name": shape.name, "h_qk": shape.h_qk, "h_v": shape.h_v, "seq_lens": list(shape.seq_lens),
              "floor": floor(shape, ceilings["gemm"], ceilings["copy"]), "providers": {}}
    grads = {}
    for name, fn, _ in found:
        if fn is None:
            continue
        cell = {}
        try:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            grads[name] = _autograd_step(fn, x)()
            torch.cuda.synchronize()
            cell["peak_bytes"] = torch.cuda.max_memory_allocated() - before
            both = time_calls([_autograd_step(fn, x)])
            alone = time_calls([_autograd_step(fn, x, retain=True)])
            cell.update(fwd_bwd_ms=both.ms, bwd_ms=alone.ms, method=both.method, note=both.note or alone.note)
        except Exception as error:  # a provider that fails on a shape is reported, not fatal
            cell["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}"
        record["providers"][name] = cell
    if "gdnc" in grads and "FlashQLA" in grads:
        record["gdnc_vs_flashqla"] = {n: _rel(a, b) for n, a, b in zip(GRADIENTS, grads["gdnc"], grads["FlashQLA"])}
    return record


def markdown(results: dict) -> str:
    names = [n for n, fn, _ in results["providers"] if fn]
    lines = [f"# Forward + backward, {results['device']['name']}, {results['date']}", "",
             "CUDA-graph medians in ms (fwd+bwd through autograd / the backward alone); ratios are the peer's time "
             "over gdnc's (above 1: gdnc faster); floor = max(FLOPs / GEMM rate, bytes / copy bandwidth).", "",
             "| shape | " + " | ".join(f"{n} fwd+bwd / bwd" for n in names) + " | FlashQLA/gdnc | FLA/gdnc | gdnc/floor |"
             " peak MB " + "/".join(names) + " | max grad diff vs FlashQLA |",
             "|" + "---|" * (len(names) + 6)]
    for r in results["shapes"]:
        cells, p = [], r["providers"]
        for n in names:
            c = p.get(n, {})
            cells.append(c["error"][:40] if "error" in c else f"{c['fwd_bwd_ms']:.3f} / {c['bwd_ms']:.3f}" if c else "—")

        def ratio(peer):
            a, b = p.get(peer, {}), p.get("gdnc", {})
            return f"{a['fwd_bwd_ms'] / b['fwd_bwd_ms']:.2f}" if "fwd_bwd_ms" in a and "fwd_bwd_ms" in b else "—"

        gd = p.get("gdnc", {})
        to_floor = f"{gd['fwd_bwd_ms'] / r['floor']['fwd_bwd_ms']:.1f}" if "fwd_bwd_ms" in gd else "—"
        peaks = "/".join(f"{p[n]['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in p.get(n, {}) else "—" for n in names)
        diff = f"{max(r['gdnc_vs_flashqla'].values()):.1e}" if "gdnc_vs_flashqla" in r else "—"
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {ratio('FlashQLA')} | {ratio('FLA')} | {to_floor} | "
                     f"{peaks} | {diff} |")
    for peer in ("FlashQLA", "FLA"):
        ratios = [r["providers"][peer]["fwd_bwd_ms"] / r["providers"]["gdnc"]["fwd_bwd_ms"] for r in results["shapes"]
                  if "fwd_bwd_ms" in r["providers"].get(peer, {}) and "fwd_bwd_ms" in r["providers"].get("gdnc", {})]
        if ratios:
            geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
            lines += ["", f"{peer} time / gdnc time, fwd+bwd: geometric mean {geo:.2f} over {len(ratios)} shapes "
                          f"(min {min(ratios):.2f}, max {max(ratios):.2f})"]
    lines += ["", "Paths: " + "; ".join(f"{n}: {why}" for n, _, why in results["providers"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gdnc bench --backward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=None, help="comma-separated glob patterns over shape names (h16-32_1x8192)")
    parser.add_argument("--out", type=Path, required=True, help="results folder (results.json, results.md)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=PROVIDERS)
    args = parser.parse_args(argv)
    try:
        chosen = select(backward_shapes(), args.shapes)
    except ValueError as error:
        parser.error(str(error))
    found = providers(args.providers)
    ceilings = {"gemm": measure_gemm_rate()["flops_per_s"], "copy": measure_copy_bandwidth()["bytes_per_s"]}
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": datetime.date.today().isoformat(), "device": forward_bench._device_info(),
               "versions": forward_bench._versions(), "ceilings": ceilings,
               "providers": [(n, fn is not None, why) for n, fn, why in found], "shapes": []}
    for shape in chosen:
        results["shapes"].append(run_shape(shape, found, ceilings, args.seed))
        r = results["shapes"][-1]
        print(shape.name, {n: c.get("fwd_bwd_ms", c.get("error")) for n, c in r["providers"].items()}, flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0
