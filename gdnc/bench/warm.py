"""Warm-up before timing: the providers compile and autotune their kernels for the selected shapes,
the peers in parallel worker processes (into the on-disk caches that the timing process then
reads), gdnc in the timing process itself.

Why: FlashQLA compiles TileLang kernels per head configuration and kernel variant (~100-120 s for
the variants the token mixes need, H100) and FLA autotunes its Triton kernels (~40-80 s); over the
nine head configurations of the full table that is ~32 min in one process, three device calls.

A unit of work is one provider on one head configuration: it calls the provider once on every
selected token mix of that head configuration, with inputs of the real size, because the peers pick
their kernels from the token counts (FlashQLA's intra-card CP split and block_DV follow the number
of chunks and sequences; FLA compiles a dense and a varlen variant; gdnc picks block_v from the
number of sequences). Workers take units one at a time, costliest first, so nine head
configurations over eight workers end near total / workers rather than at two head
configurations' worth of compilation. gdnc's units run in the timing process (IN_PROCESS).

    parent:  warm_up(shapes, providers, workers, deadline, gpu_bytes) -> record for results.json
    worker:  python -m gdnc.bench.warm PLAN.json WORKER_INDEX
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import peers, processes
from .shapes import Shape, make_inputs

# Seconds one unit took on the H100 with empty caches (2026-11-23, NOTES.md); only their order
# matters: the costliest units start first.
EXPECTED_UNIT_S = {"FlashQLA": 110.0, "FLA Triton": 60.0}

# GPU memory one worker may hold at its peak: a CUDA context and one call on the largest shape
# (16/64 or 32/32 × 32768 tokens: ~1.4 GB of inputs and outputs, FLA's intermediates twice that).
WORKER_GPU_BYTES = 6 << 30
GPU_SHARE = 0.85  # of the GPU's memory, for all workers together

# Providers whose loaded kernels live in the calling process: gdnc keeps them in an lru_cache, and
# loading them starts a compile pool even when every kernel is on disk. The timing process warms
# these itself while the workers run, so its first timed calls find them loaded.
IN_PROCESS = ("gdnc",)


def worker_count(requested: int | None, units: int, cpus: int, gpu_bytes: int) -> int:
    """How many workers to start: `requested`, or min(units, cpus / 2) by default; never more
    than there are units, nor than fit in GPU_SHARE of the GPU's memory at WORKER_GPU_BYTES each."""
    wanted = max(1, cpus // 2) if requested is None else requested
    fit = max(1, int(GPU_SHARE * gpu_bytes) // WORKER_GPU_BYTES)
    return max(0, min(wanted, units, fit))


def warm_units(shapes, provider_names: list[str]) -> list[dict]:
    """One unit per provider and head configuration, with that configuration's token mixes in
    table order (the order the timing process meets them, so FLA autotunes on the same first
    shape); costliest providers first."""
    mixes: dict[tuple[int, int], list[list[int]]] = {}
    for shape in shapes:
        seen = mixes.setdefault((shape.h_qk, shape.h_v), [])
        if list(shape.seq_lens) not in seen:
            seen.append(list(shape.seq_lens))
    units = [{"provider": name, "h_qk": h_qk, "h_v": h_v, "mixes": lens}
             for name in provider_names for (h_qk, h_v), lens in mixes.items()]
    return sorted(units, key=lambda u: -EXPECTED_UNIT_S.get(u["provider"], 0.0))


def claim(run_dir: Path, index: int) -> bool:
    """Take unit `index` for this worker; False when another worker took it first."""
    try:
        os.close(os.open(run_dir / f"unit-{index}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock shared by every process that opens `path`."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def serialize_autotune_benchmarks(autotuner_class, lock_path: Path) -> bool:
    """Make Triton's autotuner measure each config while holding `lock_path`, shared by the workers.

    Why: FLA keeps its autotune results on disk (cache_results), so the config a worker picks is
    the one the timing process runs; measured while other workers run kernels on the same GPU, a
    slower config could win. The config still compiles (its first call) outside the lock.
    Returns False, changing nothing, when this Triton's autotuner has no do_bench to wrap.
    """
    measure_of = autotuner_class.__dict__.get("do_bench")
    if not isinstance(measure_of, functools.cached_property):
        return False

    def do_bench(self):
        measure = measure_of.func(self)

        def locked(kernel_call, quantiles):
            kernel_call()
            torch.cuda.synchronize()
            with file_lock(lock_path):
                return measure(kernel_call, quantiles=quantiles)

        return locked

    wrapped = functools.cached_property(do_bench)  # cached per autotuner, as the original
    wrapped.__set_name__(autotuner_class, "do_bench")
    autotuner_class.do_bench = wrapped
    return True


def _serialize_triton(lock_path: Path) -> str:
    """serialize_autotune_benchmarks on this process's Triton, said in words for the record."""
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return "no Triton"
    if serialize_autotune_benchmarks(Autotuner, lock_path):
        return "measured one config at a time across workers"
    return "not serialised: this Triton's Autotuner.do_bench is not a cached_property"


def _key(unit: dict) -> tuple[str, int, int]:
    return unit["provider"], unit["h_qk"], unit["h_v"]


def _warm_unit(unit: dict, provider, worker: int | str) -> dict:
    """Call the provider once per token mix (compilation, autotuning); outputs are dropped."""
    heads = f"{unit['h_qk']}/{unit['h_v']}"
    print(f"warm[{worker}] {unit['provider']} {heads}: {len(unit['mixes'])} token mixes", flush=True)
    start = time.perf_counter()
    errors = [] if provider.available else [f"{unit['provider']} did not load here: {provider.note}"]
    for lens in unit["mixes"] if provider.available else []:
        shape = Shape(unit["h_qk"], unit["h_v"], tuple(lens))
        try:
            with torch.no_grad():
                provider.fn(**make_inputs(shape, torch.Generator(device="cuda").manual_seed(0)))
            torch.cuda.synchronize()
        except Exception as error:  # one failing mix must not stop the others
            errors.append(f"{shape.mix}: {peers.error_reason(error)}")
    torch.cuda.empty_cache()  # hand the memory back to the other processes on the GPU
    seconds = time.perf_counter() - start
    print(f"warm[{worker}] {unit['provider']} {heads}: done in {seconds:.0f} s"
          + (f", errors ({len(errors)}): {errors[0]}" if errors else ""), flush=True)
    return {"provider": unit["provider"], "h_qk": unit["h_qk"], "h_v": unit["h_v"],
            "mixes": len(unit["mixes"]), "worker": worker, "seconds": seconds, "errors": errors}


def worker_main(argv: list[str]) -> int:
    """One worker: take units until none is left; after each, rewrite worker-<index>.json."""
    plan_path, worker = Path(argv[0]), int(argv[1])
    run_dir, units = plan_path.parent, json.loads(plan_path.read_text())["units"]
    # Loaded as the timing process loads them (fla first, dispatch off), without gdnc's GPU smoke
    # test: gdnc warms in the timing process, and the plan holds only providers it found runnable.
    providers = {p.name: p for p in peers.load_providers(smoke_test=False)}
    record = {"worker": worker, "autotune": _serialize_triton(run_dir / "gpu.lock"), "units": []}
    for index, unit in enumerate(units):
        if not claim(run_dir, index):
            continue
        record["units"].append(_warm_unit(unit, providers[unit["provider"]], worker))
        partial = run_dir / f"worker-{worker}.partial"  # replaced whole: a killed worker leaves valid JSON
        partial.write_text(json.dumps(record))
        partial.replace(run_dir / f"worker-{worker}.json")
    return 0


def _failures(codes: list[int | None], run_dir: Path, units: list[dict], done: list[dict]) -> list[str]:
    """Workers that crashed or ran out of time, and the units nobody finished."""
    failures = []
    for worker, code in enumerate(codes):
        if code is None or code:
            how = "stopped at the --budget-s deadline" if code is None else f"exited with code {code}"
            failures.append(f"worker {worker} {how}: {processes.log_tail(run_dir / f'worker-{worker}.log')}")
    finished = {_key(u) for u in done}
    failures += [f"{u['provider']} {u['h_qk']}/{u['h_v']}: not warmed (the timing process compiles it)"
                 for u in units if _key(u) not in finished]
    return failures


def _start_workers(units: list[dict], workers: int) -> tuple[Path, list]:
    """Write the plan into a fresh folder and start the workers on it."""
    run_dir = Path(tempfile.mkdtemp(prefix="gdnc-warm-"))
    plan = run_dir / "plan.json"
    plan.write_text(json.dumps({"units": units}))
    # TileLang names every kernel it compiles on stdout; the workers' stdout carries progress only.
    env = processes.child_env({"TILELANG_PRINT_ON_COMPILATION": "0"})
    return run_dir, [processes.spawn("gdnc.bench.warm", [str(plan), str(i)], env,
                                     run_dir / f"worker-{i}.log", keep_stdout=True)
                     for i in range(workers)]


def _warm_here(units: list[dict], providers: dict, deadline: float | None) -> list[dict]:
    """The in-process units, in this process, while the workers run; none past `deadline`."""
    return [_warm_unit(unit, providers[unit["provider"]], "main") for unit in units
            if deadline is None or time.monotonic() < deadline]


def warm_up(shapes, providers: list, requested: int | None, deadline: float | None,
            gpu_bytes: int) -> dict | None:
    """Warm every provider on the selected shapes: the IN_PROCESS ones here, the others in
    `requested` workers (see worker_count; 0: no warm-up, returns None); wait at most until
    `deadline` (time.monotonic()). A failure is reported, never raised: the timing process
    compiles what is missing."""
    if requested == 0:
        return None
    by_name = {p.name: p for p in providers}
    units = warm_units(shapes, [name for name in by_name if name not in IN_PROCESS])
    here = warm_units(shapes, [name for name in by_name if name in IN_PROCESS])
    workers = worker_count(requested, len(units), os.cpu_count() or 1, gpu_bytes)
    print(f"warm-up: {len(units)} units (provider × head configuration) over {workers} workers"
          + (f" (asked for {requested})" if requested not in (None, workers) else "")
          + (f", {len(here)} in this process" if here else ""), flush=True)
    start = time.monotonic()
    run_dir, procs = _start_workers(units, workers)
    try:
        done_here = _warm_here(here, by_name, deadline)
        codes = processes.wait(procs, deadline)
    finally:
        for proc in procs:
            processes.stop(proc)
    record = _gather(run_dir, units, here, codes, done_here)
    record.update(workers=workers, wall_s=time.monotonic() - start)
    _summarize(record, len(units) + len(here), run_dir)
    return record


def _gather(run_dir: Path, units: list[dict], here: list[dict], codes: list[int | None],
            done_here: list[dict]) -> dict:
    """The workers' reports and this process's units, in plan order, with what failed."""
    reports = [json.loads(path.read_text()) for path in sorted(run_dir.glob("worker-*.json"))]
    order = {_key(u): i for i, u in enumerate(units)}
    done = sorted((u for r in reports for u in r["units"]), key=lambda u: order[_key(u)])
    return {"units": done + done_here, "autotune": sorted({r["autotune"] for r in reports}),
            "failures": _failures(codes, run_dir, units + here, done + done_here)}


def _summarize(record: dict, planned: int, run_dir: Path) -> None:
    """One line and the failures; the workers' folder (plan, logs) is kept only when something failed."""
    with_errors = sum(bool(u["errors"]) for u in record["units"])
    kept = bool(record["failures"] or with_errors)
    if not kept:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"warm-up: {len(record['units'])} of {planned} units in {record['wall_s']:.0f} s "
          f"({with_errors} with errors)" + (f", worker logs in {run_dir}" if kept else "")
          + "".join(f"\n  {line}" for line in record["failures"]), flush=True)

if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
