"""Cold start: time to the first result for a new head configuration, compilation included.

Each provider runs in a fresh process whose TileLang, Triton, gdnc and CUDA caches point into an
empty temporary folder: it imports its library, makes 1×4096-token inputs, calls the op once and
synchronises. Times count from the moment the parent started the process, so the interpreter, the
imports (torch, gdnc.bench, the library) and the compilation all count. Each needs the GPU for
one small call and otherwise the CPU, so they run beside the warm-up (the record says how many
workers there were) and end before anything is timed.

    parent:  start(h_qk, h_v) ... collect(runs, h_qk, h_v, deadline, warm_workers) -> record
    child:   python -m gdnc.bench.cold PROVIDER HQ/HV TOKENS OUT.json
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from . import processes
from .peers import error_reason
from .shapes import Shape, make_inputs

TOKENS = 4096
# Provider name -> the module whose chunk_gated_delta_rule the child imports and calls.
MODULES = {"gdnc": "gdnc", "FlashQLA": "flash_qla"}


def child_main(argv: list[str]) -> int:
    """Import, make inputs, call once, synchronise; write wall-clock times (or the error) to OUT."""
    provider, heads, tokens, out = argv
    # gdnc says so in a warning when a call falls back to its reference: that would time the wrong thing
    warnings.filterwarnings("error", message="gdnc: ")
    try:
        op = importlib.import_module(MODULES[provider]).chunk_gated_delta_rule
        imported = time.time()
        h_qk, h_v = map(int, heads.split("/"))
        inputs = make_inputs(Shape(h_qk, h_v, (int(tokens),)), torch.Generator(device="cuda").manual_seed(0))
        torch.cuda.synchronize()
        called = time.time()
        with torch.no_grad():
            op(**inputs)
        torch.cuda.synchronize()
        record = {"imported": imported, "called": called, "done": time.time()}
    except Exception as error:  # the record says why; the parent carries on
        record = {"error": error_reason(error)}
    Path(out).write_text(json.dumps(record))
    return 0


def start(h_qk: int, h_v: int) -> list[dict]:
    """One child per provider, each with its own empty caches; returns the running children."""
    runs = []
    for provider in MODULES:
        folder = Path(tempfile.mkdtemp(prefix=f"gdnc-cold-{provider}-"))
        env = processes.child_env({**processes.cache_env(folder), "CUDA_CACHE_PATH": str(folder / "cuda")})
        args = [provider, f"{h_qk}/{h_v}", str(TOKENS), str(folder / "result.json")]
        spawned = time.time()
        proc = processes.spawn("gdnc.bench.cold", args, env, folder / "log.txt")
        runs.append({"provider": provider, "folder": folder, "spawned": spawned, "proc": proc})
    return runs


def _result(run: dict, code: int | None) -> dict:
    """Seconds from process start to imported / to first result, and of the first call; or why not."""
    if code is None:
        return {"error": "stopped at the --budget-s deadline before its first result"}
    out = run["folder"] / "result.json"
    if not out.exists():
        return {"error": f"exited with code {code}: {processes.log_tail(run['folder'] / 'log.txt')}"}
    times = json.loads(out.read_text())
    if "error" in times:
        return {"error": times["error"]}
    return {"import_s": times["imported"] - run["spawned"], "first_call_s": times["done"] - times["called"],
            "total_s": times["done"] - run["spawned"]}


def collect(runs: list[dict], h_qk: int, h_v: int, deadline: float | None, warm_workers: int) -> dict:
    """Wait for the children (at most until `deadline`), remove their caches, return the record."""
    codes = processes.wait([run["proc"] for run in runs], deadline)
    results = {run["provider"]: _result(run, code) for run, code in zip(runs, codes)}
    for run in runs:
        shutil.rmtree(run["folder"], ignore_errors=True)
    for provider, result in results.items():
        print(f"cold start {provider} {h_qk}/{h_v} 1×{TOKENS}: " + (
            f"ERROR {result['error']}" if "error" in result else
            f"first result after {result['total_s']:.1f} s (imports {result['import_s']:.1f} s, "
            f"first call {result['first_call_s']:.1f} s)"), flush=True)
    return {"h_qk": h_qk, "h_v": h_v, "mix": f"1x{TOKENS}", "beside_warm_workers": warm_workers,
            "results": results}


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
