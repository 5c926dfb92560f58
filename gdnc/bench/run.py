"""`gdnc bench`: gdnc and its peers on the forward shapes, side by side, checked and timed.

One process times, with the same fresh random inputs for every provider, CUDA-graph replays, two
repeats; every pair of providers cross-checked, and the 1×4096 shapes against the float64
reference. Before it, worker processes compile every provider's kernels for the selected shapes
into the shared on-disk caches (warm.py), and fresh processes with empty caches time the first
result for one head configuration (cold.py). Writes results.json after every shape, then
results.md and latency.png.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import math
import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path

import torch

from . import cold, peers, processes, report, roofline, warm
from . import shapes as shape_table
from .timing import measure_copy_bandwidth, measure_gemm_rate, time_calls

# Small shapes rotate over input sets totalling this many L2 sizes, so replays read HBM.
ROTATION_L2_MULTIPLE = 3
MAX_INPUT_SETS = 8


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gdnc bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a subset: 2 head configurations x 5 token mixes (about ten minutes with "
                             "the peers' first compilation)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default benchmarks/results/<date>-<gpu>/)")
    parser.add_argument("--shapes", default=None,
                        help="comma-separated glob patterns over shape names, e.g. 'h16-32_*,*_1x4096'")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the cross-checks and the float64 check")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip shapes that would likely end after this many seconds (keeps "
                             "a run inside a time limit; skipped shapes are listed); the "
                             "warm-up and the cold start count, and are stopped at it")
    parser.add_argument("--warm-workers", type=int, default=None, metavar="N",
                        help="before timing, compile the peers' kernels for the selected shapes in "
                             "N parallel processes, and gdnc's in this one (default: min(peers × "
                             "head configurations, CPUs / 2), fewer if the GPU's memory is short; "
                             "0: no warm-up)")
    parser.add_argument("--backward", action="store_true",
                        help="the backward benchmark instead (gdnc.bench.backward: `gdnc bench --backward --help`)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="put TileLang's, Triton's and gdnc's on-disk caches under this folder "
                             "(default: wherever their variables or defaults say)")
    parser.add_argument("--cold-start", type=_heads, default=None, metavar="HQ/HV",
                        help="head configuration of the cold-start measurement: gdnc's and "
                             "FlashQLA's time to a first 1x4096 result in fresh processes with "
                             "empty caches (default: the first selected head configuration)")
    parser.add_argument("--no-cold-start", dest="cold", action="store_false",
                        help="skip the cold-start measurement")
    return parser.parse_args(argv)


def _heads(text: str) -> tuple[int, int]:
    """'16/32' -> (16, 32), checked as gdnc's kernels check it."""
    from gdnc.emit.config import Heads

    try:
        heads = Heads.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return heads.h_qk, heads.h_v


def _gpu_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'."""
    words = [w for w in device_name.split() if w.lower() not in ("nvidia", "geforce", "tesla")]
    return re.sub(r"[^a-z0-9]", "", (words or ["gpu"])[0].lower()) or "gpu"


def _device_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_bytes": props.total_memory,
        "l2_bytes": props.L2_cache_size,
    }


def _versions() -> dict:
    found = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for dist in ("torch", "triton", "tilelang", "flash-qla", "fla-core"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _rel_l2(x, ref) -> float:
    """||x - ref|| / ||ref|| in float32 (enough for errors near 1e-3, and half the memory)."""
    x, ref = x.float(), ref.float()
    return ((x - ref).norm() / ref.norm()).item()


def _cross_check(outputs: dict) -> list[dict]:
    return [{"a": a, "b": b, "o": _rel_l2(outputs[a][0], outputs[b][0]),
             "final_state": _rel_l2(outputs[a][1], outputs[b][1])}
            for a, b in itertools.combinations(outputs, 2)]


def _float64_check(inputs: dict, outputs: dict) -> dict:
    """Every provider against gdnc's float64 chunked reference, when that reference exists."""
    try:
        import gdnc
        from gdnc import reference
        recurrence = gdnc.get_variant("gdn")
    except Exception as error:  # the reference is written in parallel; say why it is missing
        return {"status": f"skipped: gdnc.reference not importable ({peers.error_reason(error)})"}
    wide = {name: inputs[name].double() for name in ("q", "k", "v", "g", "beta", "initial_state")}
    try:
        o_ref, ht_ref = reference.chunked(
            recurrence, wide["q"], wide["k"], wide["v"], g=wide["g"], beta=wide["beta"],
            scale=None, initial_state=wide["initial_state"], output_final_state=True,
            cu_seqlens=inputs["cu_seqlens"], chunk_size=64)
    except Exception as error:
        return {"status": f"failed: gdnc.reference.chunked raised {peers.error_reason(error)}"}
    return {"status": "ok", "errors": {
        name: {"o": _rel_l2(o.double(), o_ref), "final_state": _rel_l2(ht.double(), ht_ref)}
        for name, (o, ht) in outputs.items()}}


def _input_sets(shape, generator, l2_bytes: int) -> list[dict]:
    count = math.ceil(ROTATION_L2_MULTIPLE * l2_bytes / roofline.hbm_bytes(shape))
    first = shape_table.make_inputs(shape, generator)
    rest = [shape_table.make_inputs(shape, generator, cu_seqlens=first["cu_seqlens"])
            for _ in range(min(max(count, 1), MAX_INPUT_SETS) - 1)]
    return [first, *rest]


def _run_provider(provider, input_sets: list[dict], roof: dict):
    """First call (compilation included, wall clock), then graph timing. -> (entry, outputs)"""
    try:
        torch.cuda.synchronize()
        start = time.perf_counter()
        o, final_state = provider.fn(**input_sets[0])
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - start
        timing = time_calls([functools.partial(provider.fn, **s) for s in input_sets])
    except Exception as error:  # one failing provider must not stop the others
        return {"error": peers.error_reason(error)}, None
    entry = {"first_call_s": first_call_s, **timing.as_dict(), **roofline.achieved(roof, timing.ms)}
    return entry, (o, final_state)


def _run_shape(shape, providers, ceilings: dict, generator, check: bool, l2_bytes: int):
    roof = roofline.floor(shape, ceilings["gemm"]["flops_per_s"], ceilings["copy"]["bytes_per_s"])
    input_sets = _input_sets(shape, generator, l2_bytes)
    record = {"name": shape.name, "h_qk": shape.h_qk, "h_v": shape.h_v,
              "seq_lens": list(shape.seq_lens), "mix": shape.mix, "tokens": shape.tokens,
              "input_sets": len(input_sets), "roofline": roof, "results": {}}
    outputs = {}
    for provider in providers:
        entry, out = _run_provider(provider, input_sets, roof)
        record["results"][provider.name] = entry
        if out is not None:
            outputs[provider.name] = out
    if check:
        record["cross_check"] = _cross_check(outputs)
        if shape.float64_check:
            record["float64"] = _float64_check(input_sets[0], outputs)
    return record


def _progress_line(record: dict) -> str:
    parts = [f"{record['name']:<22} floor {record['roofline']['floor_ms']:.3f}"]
    for name, entry in record["results"].items():
        if "error" in entry:
            parts.append(f"{name} ERROR {entry['error'][:120]}")
        else:
            parts.append(f"{name} {entry['ms']:.3f} ±{entry['spread'] * 100:.0f}% "
                         f"(first {entry['first_call_s']:.1f}s, {entry['method']})")
    for pair in record.get("cross_check", []):
        parts.append(f"{pair['a']}~{pair['b']} o {pair['o']:.1e} ht {pair['final_state']:.1e}")
    if "float64" in record:
        parts.append(f"float64 {record['float64']['status']}")
    return " | ".join(parts)


def _use_caches(cache_dir: Path | None) -> None:
    """Point the caches into --cache-dir, and keep Triton's autotune results on disk, before any
    library is imported; the warm-up workers inherit both."""
    if cache_dir is not None:
        os.environ.update(processes.cache_env(cache_dir.resolve()))
    # FLA asks Triton to keep its autotune results on disk already (FLA_CACHE_RESULTS, on by
    # default); this extends it to every other Triton autotuner.
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")


def _cache_settings() -> dict:
    """The cache variables as the timing process sees them (gdnc points TILELANG_CACHE_DIR into
    its own cache when it compiles, so FlashQLA's kernels are found there too)."""
    return {name: os.environ.get(name) for name in
            (*processes.CACHE_FOLDERS, "TRITON_CACHE_AUTOTUNING", "FLA_CACHE_RESULTS")}


def _time_shapes(args, chosen, runnable, results, generator, started, out_dir: Path) -> None:
    """Time every chosen shape that fits the budget; results.json is rewritten after each."""
    # --budget-s skips a shape when it would likely end past the budget; shapes that open a new
    # head configuration load (or compile) kernels, so they are estimated apart from the rest.
    longest = {True: 0.0, False: 0.0}
    seen_heads = set()
    for shape in chosen:
        opens = (shape.h_qk, shape.h_v) not in seen_heads
        elapsed = time.monotonic() - started
        if args.budget_s is not None and elapsed + longest[opens] > args.budget_s:
            results["not_run_shapes"].append({"name": shape.name, "reason": (
                f"--budget-s {args.budget_s:g}: {elapsed:.0f} s spent, ~{longest[opens]:.0f} s "
                f"more expected")})
            continue
        seen_heads.add((shape.h_qk, shape.h_v))
        record = _run_shape(shape, runnable, results["ceilings"], generator,
                            args.check, results["device"]["l2_bytes"])
        longest[opens] = max(longest[opens], time.monotonic() - started - elapsed)
        results["shapes"].append(record)
        report.write_json(results, out_dir)  # a run cut short still leaves its numbers
        print(_progress_line(record), flush=True)


def main(argv=None) -> int:
    argv = list(argv) if argv is not None else None
    if argv is not None and "--backward" in argv:  # the backward benchmark has its own options
        from . import backward

        argv.remove("--backward")
        return backward.main(argv)
    args = _parse(argv)
    chosen = shape_table.select(shape_table.forward_shapes(args.quick), args.shapes)
    started = time.monotonic()
    deadline = None if args.budget_s is None else started + args.budget_s
    if not torch.cuda.is_available():
        raise SystemExit("gdnc bench needs a CUDA GPU")
    _use_caches(args.cache_dir)
    cold_heads = args.cold_start or (chosen[0].h_qk, chosen[0].h_v)
    cold_runs = cold.start(*cold_heads) if args.cold else []
    try:
        providers = peers.load_providers()  # before anything else can import fla (see peers)
        runnable = [p for p in providers if p.available]
        if not runnable:
            raise SystemExit("no provider can run here: "
                             + "; ".join(f"{p.name}: {p.note}" for p in providers))
        for p in providers:
            print(f"provider {p.name}: {p.note}", flush=True)
        warmup = warm.warm_up(chosen, runnable, args.warm_workers, deadline,
                              torch.cuda.get_device_properties(0).total_memory)
        # the cold-start processes run kernels too: they end before anything is timed
        beside = warmup["workers"] if warmup else 0
        cold_start = cold.collect(cold_runs, *cold_heads, deadline, beside) if cold_runs else None
    finally:
        for run in cold_runs:
            processes.stop(run["proc"])
    baseline = next((p.name for p in runnable if p.name in ("gdnc", "FlashQLA")), runnable[0].name)

    device = _device_info()
    date = datetime.date.today().isoformat()
    out_dir = args.out or Path("benchmarks/results") / f"{date}-{_gpu_slug(device['name'])}"
    seed = int.from_bytes(os.urandom(4), "little")  # fresh inputs every run, recorded
    generator = torch.Generator(device="cuda").manual_seed(seed)

    results = {
        "schema": 1, "date": date, "device": device, "versions": _versions(),
        "settings": {"quick": args.quick, "check": args.check, "seed": seed,
                     "shapes_filter": args.shapes, "caches": _cache_settings(), "timing":
                     "CUDA-graph replays, median per repeat, 2 repeats, warm-up first"},
        "baseline": baseline,
        "providers": [{"name": p.name, "available": p.available, "note": p.note,
                       "version": p.version, "published": p.published} for p in providers],
        "warmup": warmup, "cold_start": cold_start,
        "shapes": [], "not_run_shapes": [],
    }
    with torch.no_grad():
        results["ceilings"] = {"copy": measure_copy_bandwidth(), "gemm": measure_gemm_rate()}
        print(f"ceilings: copy {results['ceilings']['copy']['bytes_per_s'] / 1e12:.2f} TB/s, "
              f"bf16 GEMM {results['ceilings']['gemm']['flops_per_s'] / 1e12:.0f} TFLOP/s",
              flush=True)
        _time_shapes(args, chosen, runnable, results, generator, started, out_dir)

    for path in report.write_all(results, out_dir):
        print(f"wrote {path}")
    print(report.markdown(results).split("\n## ")[0])  # the latency table, last in the log
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
