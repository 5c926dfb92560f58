"""The benchmark's CPU side: tables and plot on a small fake result file, the warm-up plan and its
worker processes, the cold-start processes (no GPU, no peers)."""

import fcntl
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from gdnc.bench import cold, peers, processes, report, run, warm
from gdnc.bench.shapes import HEAD_CONFIGS, TOKEN_MIXES, Shape, forward_shapes

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(),
                                  reason="with a GPU the workers would compile for real")


def _entry(ms, spread=0.01, first_call_s=1.0):
    return {"ms": ms, "repeats_ms": [ms, ms * (1 + spread)], "spread": spread,
            "method": "cuda_graph", "calls_per_replay": 1, "replays": 50, "note": "",
            "first_call_s": first_call_s, "tflops": 100.0, "gbps": 1000.0}


def _shape(name, h_qk, h_v, mix, floor_ms, results, **extra):
    return {"name": name, "h_qk": h_qk, "h_v": h_v, "mix": mix, "seq_lens": [4096],
            "tokens": 4096, "input_sets": 1,
            "roofline": {"flops": 1e9, "bytes": 1e8, "compute_ms": floor_ms / 2,
                         "memory_ms": floor_ms, "floor_ms": floor_ms, "bound": "memory"},
            "results": results, **extra}


def _fake_results():
    return {
        "schema": 1, "date": "2026-01-02",
        "device": {"name": "Fake GPU", "capability": "9.0", "sm_count": 132,
                   "memory_bytes": 1, "l2_bytes": 1},
        "versions": {"torch": "0", "flash-qla": "0.1.3"},
        "settings": {"quick": True, "check": True, "seed": 7},
        "ceilings": {"copy": {"bytes_per_s": 3.0e12}, "gemm": {"flops_per_s": 7.0e14}},
        "baseline": "FlashQLA",
        "providers": [
            {"name": "gdnc", "available": False, "version": None, "published": None,
             "note": "not available: gdnc.chunk_gated_delta_rule does not exist yet"},
            {"name": "FlashQLA", "available": True, "version": "0.1.3", "published": None,
             "note": "flash_qla"},
            {"name": "FLA Triton", "available": True, "version": "0.6.0", "published": None,
             "note": "fla, dispatch off"},
            {"name": "FlashInfer", "available": False, "version": None, "note": "not run: too big",
             "published": {"source": "H200 paper", "forward_cases": 171,
                           "flashinfer_faster_cases": 63,
                           "time_ratio_over_flashqla": {
                               "FlashInfer": {"geomean": 1.28, "min": 0.64, "max": 5.16},
                               "FLA Triton": {"geomean": 2.05, "min": 1.12, "max": 3.11}},
                           "examples_ms": {"h2-8_1x32768": {"FlashInfer": 1.655}}}},
        ],
        "shapes": [
            _shape("h2-8_1x4096", 2, 8, "1x4096", 0.05,
                   {"FlashQLA": _entry(0.25, first_call_s=90.0), "FLA Triton": _entry(1.0)},
                   cross_check=[{"a": "FlashQLA", "b": "FLA Triton", "o": 3e-3,
                                 "final_state": 0.5}],
                   float64={"status": "skipped: gdnc.reference not importable (ImportError)"}),
            _shape("h2-8_4x8192", 2, 8, "4x8192", 0.25,
                   {"FlashQLA": _entry(0.5), "FLA Triton": _entry(0.5, spread=0.2)}),
            _shape("h16-32_1x4096", 16, 32, "1x4096", 0.1,
                   {"FlashQLA": _entry(0.3), "FLA Triton": {"error": "RuntimeError: boom"}}),
        ],
        "not_run_shapes": [{"name": "h16-64_8x1024", "reason": "--budget-s 500 spent"}],
    }


def test_markdown_tables():
    text = report.markdown(_fake_results())
    assert text.startswith("# GDN forward: Fake GPU, 2026-01-02")
    assert "| h_qk/h_v | tokens | floor ms | FlashQLA ms | FLA Triton ms | FLA Triton / FlashQLA |" in text
    assert "| 2/8 | 1×4096 | 0.050 (m) | 0.250 ±1% | 1.000 ±1% | 4.00 | 5.0 | 100 | 1000 |" in text
    assert "| 2/8 | 4×8192 | 0.250 (m) | 0.500 ±1% | 0.500 ±20% | 1.00 | 2.0 |" in text
    assert "| 16/32 | 1×4096 | 0.100 (m) | 0.300 ±1% | error | – |" in text
    # geometric means over the shapes where both ran: sqrt(4 * 1) = 2
    assert "| FLA Triton | 2 | 2.00 (1.00–4.00) |" in text
    assert "| FlashQLA | 3 | 1.00 (1.00–1.00) |" in text
    # FlashInfer: published, beside this run's ratio for FLA
    assert "FlashInfer: published numbers, not measured here" in text
    assert "| FlashInfer | 1.28 (0.64–5.16) | not run |" in text
    assert "| FLA Triton | 2.05 (1.12–3.11) | 2.00 (1.00–4.00), 2 shapes |" in text
    # first calls (no warm-up: compilation included), correctness, reasons
    assert "## First calls in the timing process (compilation and autotuning included)" in text
    assert "| FlashQLA | 2/8 | 90.0 (1×4096) | 91.0 |" in text
    assert "Cold start" not in text and "Warm-up" not in text
    assert "| h2-8_1x4096 | FlashQLA vs FLA Triton | 3.0e-03 | **5.0e-01 (!)** |" in text
    assert "float64 check skipped: gdnc.reference not importable" in text
    assert "- gdnc: not available: gdnc.chunk_gated_delta_rule does not exist yet" in text
    assert "- h16-32_1x4096, FLA Triton: RuntimeError: boom" in text
    assert "- h16-64_8x1024: not run, --budget-s 500 spent" in text


def test_write_all_and_rerender(tmp_path):
    results = _fake_results()
    written = report.write_all(results, tmp_path)
    assert [p.name for p in written] == ["results.json", "results.md", "latency.png"]
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["FLA Triton"]["over_baseline"]["geomean"] == pytest.approx(2.0)
    (tmp_path / "latency.png").unlink()
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    assert (tmp_path / "results.md").read_text() == report.markdown(saved)


def _fake_warmup_and_cold_start(results):
    results["warmup"] = {
        "workers": 2, "wall_s": 181.4, "autotune": ["measured one config at a time across workers"],
        "units": [{"provider": "FlashQLA", "h_qk": 2, "h_v": 8, "mixes": 5, "worker": 1,
                   "seconds": 104.25, "errors": []},
                  {"provider": "FLA Triton", "h_qk": 2, "h_v": 8, "mixes": 5, "worker": 0,
                   "seconds": 61.0, "errors": ["4x8192: RuntimeError: boom", "8x1024: RuntimeError: boom"]}],
        "failures": ["worker 0 exited with code -9: Killed"]}
    results["cold_start"] = {
        "h_qk": 16, "h_v": 32, "mix": "1x4096", "beside_warm_workers": 2,
        "results": {"gdnc": {"import_s": 4.04, "first_call_s": 40.96, "total_s": 45.51},
                    "FlashQLA": {"error": "ModuleNotFoundError: No module named 'flash_qla'"}}}
    return results


def test_markdown_warmup_and_cold_start():
    text = report.markdown(_fake_warmup_and_cold_start(_fake_results()))
    assert "## Cold start: time to the first result for a new head configuration" in text
    assert "16/32, 1×4096 tokens. Each provider in a fresh process with empty" in text
    assert "beside 2 warm-up workers" in text
    assert "| gdnc | 4.0 | 41.0 | 45.5 |" in text
    assert "| FlashQLA | error: ModuleNotFoundError: No module named 'flash_qla' | – | – |" in text
    assert "## First calls in the timing process (after the warm-up" in text
    assert "2 worker processes, 181 s;" in text and "measured one config at a time" in text
    assert "| FlashQLA | 2/8 | 5 | 104.2 | 1 | – |" in text
    assert "| FLA Triton | 2/8 | 5 | 61.0 | 0 | 2, first: 4x8192: RuntimeError: boom |" in text
    assert "- worker 0 exited with code -9: Killed" in text
    # the order of the sections: cold start, first calls, warm-up, then correctness
    assert text.index("## Cold start") < text.index("## First calls") < text.index("## Warm-up") \
        < text.index("## Correctness")


def test_warm_units_one_per_provider_and_head_configuration():
    shapes = forward_shapes(quick=True) + [Shape(2, 8, (4096,))]  # a repeated mix is warmed once
    units = warm.warm_units(shapes, ["gdnc", "FlashQLA", "FLA Triton"])
    # costliest provider first, head configurations in table order within a provider
    assert [(u["provider"], u["h_qk"], u["h_v"]) for u in units] == [
        ("FlashQLA", 2, 8), ("FlashQLA", 16, 32), ("FLA Triton", 2, 8), ("FLA Triton", 16, 32),
        ("gdnc", 2, 8), ("gdnc", 16, 32)]
    # every token mix of the head configuration, real sizes, in the order the timing meets them
    assert units[0]["mixes"] == [[4096], [32768], [28672, 4096], [8192] * 4, [1024] * 8]
    full = warm.warm_units(forward_shapes(), ["FlashQLA", "FLA Triton"])
    assert len(full) == 2 * len(HEAD_CONFIGS)
    assert {(u["h_qk"], u["h_v"]) for u in full} == set(HEAD_CONFIGS)
    assert all(u["mixes"] == [list(m) for m in TOKEN_MIXES] for u in full)
    selected = [s for s in forward_shapes() if s.name.endswith("_8x1024")]
    assert all(u["mixes"] == [[1024] * 8] for u in warm.warm_units(selected, ["gdnc"]))


def test_worker_count():
    h100 = 85_000_000_000
    assert warm.worker_count(None, units=27, cpus=16, gpu_bytes=h100) == 8  # CPUs / 2
    assert warm.worker_count(None, units=6, cpus=16, gpu_bytes=h100) == 6  # no idle worker
    assert warm.worker_count(None, units=27, cpus=1, gpu_bytes=h100) == 1
    assert warm.worker_count(0, units=27, cpus=16, gpu_bytes=h100) == 0  # off
    assert warm.worker_count(16, units=27, cpus=16, gpu_bytes=h100) == 11  # 11 × 6 GiB ≤ 85% of 85 GB
    assert warm.worker_count(16, units=27, cpus=16, gpu_bytes=8 << 30) == 1


def test_each_unit_is_claimed_once(tmp_path):
    taken = {index: [worker for worker in range(3) if warm.claim(tmp_path, index)]
             for index in range(5)}
    assert taken == {index: [0] for index in range(5)}


def test_autotune_measurements_hold_the_shared_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    lock = tmp_path / "gpu.lock"
    calls = []

    def measure(kernel_call, quantiles):
        with open(lock, "a") as other, pytest.raises(BlockingIOError):  # no other worker could take it
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        calls.append(("measure", len(calls), quantiles))
        return [1.0, 0.9, 1.1]

    class Autotuner:  # Triton's shape: do_bench is a cached_property returning the benchmarker
        @functools.cached_property
        def do_bench(self):
            return measure

    assert warm.serialize_autotune_benchmarks(Autotuner, lock)
    tuner = Autotuner()
    result = tuner.do_bench(lambda: calls.append("compile"), quantiles=(0.5, 0.2, 0.8))
    assert result == [1.0, 0.9, 1.1]
    assert calls == ["compile", ("measure", 1, (0.5, 0.2, 0.8))]  # compiled before the lock
    with open(lock, "a") as other:  # released afterwards
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)

    class OldAutotuner:  # an autotuner without a cached do_bench is left alone
        do_bench = staticmethod(measure)

    assert not warm.serialize_autotune_benchmarks(OldAutotuner, lock)
    assert OldAutotuner.do_bench is measure


def test_child_processes_find_this_checkout_and_their_caches(tmp_path):
    env = processes.child_env(processes.cache_env(tmp_path))
    checkout = str(Path(warm.__file__).resolve().parents[2])
    assert env["PYTHONPATH"].split(os.pathsep)[0] == checkout
    assert env["TILELANG_CACHE_DIR"] == str(tmp_path / "tilelang")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert env["GDNC_CACHE_DIR"] == str(tmp_path / "gdnc")


@needs_no_gpu
def test_warm_up_reports_failing_calls_and_crashed_workers(tmp_path, monkeypatch):
    """Real worker processes for a provider they cannot load: they crash, gdnc's calls here fail
    without a GPU; all of it is reported, nothing is raised."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the workers' folders, kept on failure
    shapes = [Shape(2, 8, (4096,)), Shape(2, 8, (1024,) * 8), Shape(16, 32, (4096,))]
    providers = [peers.load_gdnc(smoke_test=False), peers.Provider("unknown", lambda **_: None, "test")]
    record = warm.warm_up(shapes, providers, requested=2, deadline=None, gpu_bytes=80 << 30)
    assert record["workers"] == 2
    # gdnc runs in this process (warm.IN_PROCESS), one unit per head configuration
    assert [(u["provider"], u["h_qk"], u["mixes"], u["worker"]) for u in record["units"]] == [
        ("gdnc", 2, 2, "main"), ("gdnc", 16, 1, "main")]
    assert all(len(u["errors"]) == u["mixes"] and "CUDA" in u["errors"][0] for u in record["units"])
    crashes = [f for f in record["failures"] if "exited with code 1" in f]
    assert len(crashes) == 2 and all("KeyError: 'unknown'" in f for f in crashes)
    assert "unknown 2/8: not warmed (the timing process compiles it)" in record["failures"]
    assert "unknown 16/32: not warmed (the timing process compiles it)" in record["failures"]
    # past the deadline: nothing warms here, the workers are stopped, every unit is listed
    late = warm.warm_up(shapes, providers, requested=2, deadline=time.monotonic(), gpu_bytes=80 << 30)
    assert late["units"] == []
    assert sum("stopped at the --budget-s deadline" in f for f in late["failures"]) == 2
    assert sum("not warmed" in f for f in late["failures"]) == 4
    assert warm.warm_up(shapes, providers, requested=0, deadline=None, gpu_bytes=80 << 30) is None


@needs_no_gpu
def test_cold_start_records_why_a_provider_has_no_result(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runs = cold.start(2, 8)
    folders = [run["folder"] for run in runs]
    record = cold.collect(runs, 2, 8, deadline=None, warm_workers=0)
    assert record["h_qk"] == 2 and record["h_v"] == 8 and record["mix"] == "1x4096"
    assert set(record["results"]) == {"gdnc", "FlashQLA"}
    assert all("error" in result for result in record["results"].values())
    assert "CUDA" in record["results"]["gdnc"]["error"]
    assert not any(folder.exists() for folder in folders)  # the empty caches are removed


def test_bench_options():
    args = run._parse(["--warm-workers", "3", "--cache-dir", "/tmp/c", "--cold-start", "8/24"])
    assert (args.warm_workers, args.cache_dir, args.cold_start, args.cold) == (3, Path("/tmp/c"), (8, 24), True)
    args = run._parse(["--no-cold-start"])
    assert (args.warm_workers, args.cache_dir, args.cold_start, args.cold) == (None, None, None, False)
    with pytest.raises(SystemExit):
        run._parse(["--cold-start", "16/30"])


def test_merge_runs(tmp_path):
    """A later run's shape replaces an earlier run's, a dropped shape is listed as not run with its
    reason, a shape not run in one run but measured in another counts as measured; runs from two
    devices are refused."""
    first, second = _fake_results(), _fake_results()
    second["settings"] = {"quick": False, "check": True, "seed": 8, "shapes_filter": "*_4x8192,h16-64_*"}
    second["shapes"] = [_shape("h2-8_4x8192", 2, 8, "4x8192", 0.25,
                               {"FlashQLA": _entry(0.4), "FLA Triton": _entry(0.6)}),
                        _shape("h16-64_8x1024", 16, 64, "8x1024", 0.1,
                               {"FlashQLA": _entry(0.2), "FLA Triton": _entry(0.3)})]
    second["not_run_shapes"] = [{"name": "h2-8_1x4096", "reason": "not selected"}]
    for i, run in enumerate((first, second)):
        report.write_json(run, tmp_path / f"run{i}")
    assert report.main([str(tmp_path / "merged"), "--merge", str(tmp_path / "run0"), str(tmp_path / "run1"),
                        "--drop", "h16-32_1x4096=measured under an old plan"]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert [s["name"] for s in merged["shapes"]] == ["h2-8_1x4096", "h2-8_4x8192", "h16-64_8x1024"]
    assert merged["shapes"][1]["results"]["FlashQLA"]["ms"] == 0.4
    assert merged["not_run_shapes"] == [{"name": "h16-32_1x4096", "reason": "measured under an old plan"}]
    text = (tmp_path / "merged" / "results.md").read_text()
    assert "Merged from 2 runs (seeds 7, 8" in text and "the first run's ceilings" in text
    second["device"] = dict(second["device"], name="Other GPU")
    with pytest.raises(ValueError, match="different devices"):
        report.merge([first, second], {})


def test_backward_benchmark_shapes_floor_and_table():
    """gdnc bench --backward's parts that need no GPU: anchors.md's 48 shapes, a floor that grows
    with the work, and a table that reads the per-provider cells, errors and ratios."""
    from gdnc.bench import backward
    from gdnc.bench.shapes import backward_shapes

    shapes = backward_shapes()
    assert len(shapes) == 48 and len({s.name for s in shapes}) == 48 and shapes[0].name == "h16-32_1x8192"
    assert shapes[4].name == "h16-32_1x32768"
    short, long = (backward.floor(s, gemm=7e14, copy=3e12) for s in (shapes[0], shapes[4]))
    assert 3.5 < long["fwd_bwd_ms"] / short["fwd_bwd_ms"] < 4.5 and short["bwd_ms"] < short["fwd_bwd_ms"]
    cell = {"fwd_bwd_ms": 2.0, "bwd_ms": 1.5, "peak_bytes": 2**30, "method": "cuda_graph", "note": ""}
    results = {"date": "2026-12-07", "device": {"name": "GPU"}, "providers": [("gdnc", True, "kernels"),
               ("FlashQLA", True, "flash_qla"), ("FLA", False, "import failed")],
               "shapes": [{"name": shapes[0].name, "floor": short, "gdnc_vs_flashqla": {"dq": 2e-3, "dg": 3e-3},
                           "providers": {"gdnc": cell, "FlashQLA": {**cell, "fwd_bwd_ms": 3.0}}},
                          {"name": shapes[4].name, "floor": long, "providers": {"gdnc": {"error": "RuntimeError: boom"},
                                                                               "FlashQLA": cell}}]}
    table = backward.markdown(results)
    assert "| h16-32_1x8192 | 2.000 / 1.500 | 3.000 / 1.500 | 1.50 | — |" in table
    assert "RuntimeError: boom" in table and "3.0e-03" in table and "1024/1024" in table
    assert "FlashQLA time / gdnc time, fwd+bwd: geometric mean 1.50 over 1 shapes" in table
    assert "FLA: import failed" in table
