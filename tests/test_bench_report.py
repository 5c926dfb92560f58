"""The benchmark's table and plot code on a small fake result file (CPU only: no GPU, no peers)."""

import json

import matplotlib
import pytest

matplotlib.use("Agg")

from gdnc.bench import report


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
    # cold start, correctness, reasons
    assert "| FlashQLA | 2/8 | 90.0 (1×4096) | 91.0 |" in text
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
