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
    for name in ("gdn_prepare (heads1)", "gdn_prepare (heads4)", "cp_plan", "cp_chain") + \
            tuple(f"gdn_forward (bv{bv})" for bv in FORWARD_WIDTHS):
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
    # a forward config per width, prepare one head a CTA and four (GVA), cp_plan and cp_chain once
    assert f"[{len(FORWARD_WIDTHS) + 4}/{len(FORWARD_WIDTHS) + 4}] 2/8" in capsys.readouterr().out
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


def test_emit_writes_every_kernel_with_its_header(capsys, tmp_path):
    """`gdnc emit`: the rendered TileLang sources of one head configuration, the forward at every V
    block the op may pick, each readable Python whose header names the recurrence, IR hash and config."""
    import gdnc

    assert main(["emit", "gdn", "--hq", "16", "--hv", "32", "--out", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(["gdn_prepare_heads1.py", "gdn_prepare_heads2.py", "cp_plan.py", "cp_chain.py"]
                             + [f"gdn_forward_bv{w}.py" for w in FORWARD_WIDTHS])
    assert sorted(capsys.readouterr().out.split()) == [str(tmp_path / name) for name in written]
    for path in tmp_path.iterdir():
        source = path.read_text()
        compile(source, str(path), "exec")
        assert gdnc.get_variant("gdn").ir_hash in source and "# recurrence:" in source
    assert "block_v=64" in (tmp_path / "gdn_forward_bv64.py").read_text()
    assert "h_qk=16, h_v=32" in (tmp_path / "gdn_prepare_heads1.py").read_text()
    assert "heads_per_cta=2" in (tmp_path / "gdn_prepare_heads2.py").read_text()


@pytest.mark.parametrize("argv,message", [
    (["kda", "--hq", "2", "--hv", "8"], "no kernel template yet"),
    (["gdn", "--hq", "16", "--hv", "30"], "multiple of h_qk"),
    (["gdn", "--hq", "2", "--hv", "8", "--block-v", "48"], "block_v must be one of"),
])
def test_emit_refuses_what_it_cannot_write(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["emit", *argv, "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
