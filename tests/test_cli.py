import shutil

import pytest
import torch

from gdnc.cli import main
from gdnc.emit.config import FORWARD_WIDTHS


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("gdn", "kda", "comba", "retention"):
        assert name in out


def test_show(capsys):
    assert main(["show", "gdn"]) == 0
    out = capsys.readouterr().out
    assert "rank-1 (same key)" in out and "chunked form" in out and "U     = (I + diag(beta) M)⁻¹" in out


def test_show_unknown_variant():
    with pytest.raises(SystemExit, match="unknown variant"):
        main(["show", "nope"])


def test_check_references(capsys):
    assert main(["check", "gdn", "kda", "--T", "130", "--chunk-size", "32", "--no-kernels"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "dg=" in out and "dh0=" in out


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
def test_check_generates_and_builds_the_kernels(capsys, tmp_path, monkeypatch):
    """gdnc's main job on a machine without a GPU: references checked, kernels generated and built."""
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path))
    assert main(["check", "gdn", "--T", "130", "--heads", "2/8"]) == 0
    out = capsys.readouterr().out
    for name in ("gdn_prepare", "cp_plan", "cp_chain") + tuple(f"gdn_forward (block_v {bv})" for bv in FORWARD_WIDTHS):
        assert f"PASS {name} 2/8: built for sm_90a" in out
    if not torch.cuda.is_available():
        assert "no Hopper GPU here" in out
    assert main(["check", "kda", "--T", "70"]) == 0
    assert "kda: no kernel template yet" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
def test_build_fills_the_cache_and_a_second_run_reuses_it(capsys, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path))
    start = time.perf_counter()
    assert main(["build", "2/8", "--workers", "2"]) == 0
    first = time.perf_counter() - start
    # a forward config per width, and prepare, cp_plan, cp_chain once
    assert f"[{len(FORWARD_WIDTHS) + 3}/{len(FORWARD_WIDTHS) + 3}] 2/8" in capsys.readouterr().out
    sources = list(tmp_path.glob("*/sources/*/*.py"))
    assert {p.name.split("-")[0] for p in sources} == {"gdn_prepare", "gdn_forward", "cp_plan", "cp_chain"}
    start = time.perf_counter()
    assert main(["build", "2/8", "--workers", "2"]) == 0
    assert time.perf_counter() - start < first  # compiled kernels come from the cache


def test_bench_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        main(["bench", "--quick"])
