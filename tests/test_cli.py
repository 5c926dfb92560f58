import os
import subprocess
import sys

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


def test_show_unknown_variant(capsys):
    assert main(["show", "nope"]) == 1
    assert capsys.readouterr().err == ("gdnc show: unknown variant 'nope'; the built-in variants are linear_attn, "
                                       "simple_gla, retention, gla, delta_rule, gdn, kda, comba\n")


@pytest.mark.parametrize("argv,message", [
    (["build", "3/5"], "gdnc build: argument heads: Heads: h_v=5 must be a multiple of h_qk=3 (GVA)"),
    (["build", "16x32"], "gdnc build: argument heads: expected heads as h_qk/h_v, e.g. 16/32, got '16x32'"),
    (["check", "--heads", "16"], "gdnc check: argument --heads: expected heads as h_qk/h_v, e.g. 16/32, got '16'"),
    (["nope"], "gdnc: argument command: invalid choice: 'nope'"),
    (["check", "--T", "-5"], "gdnc check: argument --T: expected a positive whole number, got '-5'"),
    (["explain", "gdn", "--chunk-size", "0"], "gdnc explain: argument --chunk-size: expected a positive whole number"),
])
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_a_closed_pipe_ends_quietly():
    """`gdnc explain gdn | head -1`: the reader leaves early; no traceback, a non-zero exit."""
    run = subprocess.run(f"{sys.executable} -m gdnc.cli explain gdn --json | head -c 10", shell=True,
                         capture_output=True, text=True)
    assert run.stdout == '{\n "recurr' and run.stderr == ""


def test_check_references(capsys):
    assert main(["check", "gdn", "kda", "--T", "130", "--chunk-size", "32", "--no-kernels"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 2 and "dg=" in out and "dh0=" in out


@pytest.mark.nvcc
def test_check_generates_and_builds_the_kernels(capsys, built):
    """gdnc's main job on a machine without a GPU: references checked, kernels generated and built
    (the session's cache has them built already: what nvcc reported is read back)."""
    assert main(["check", "gdn", "--T", "130", "--heads", "2/8"]) == 0
    out = capsys.readouterr().out
    for name in ("gdn_prepare (heads1)", "gdn_prepare (heads4)", "cp_plan", "cp_chain") + \
            tuple(f"gdn_forward (bv{bv})" for bv in FORWARD_WIDTHS):
        assert f"PASS {name} 2/8: built for sm_90a" in out
    if not torch.cuda.is_available():
        assert "no Hopper GPU here: the kernels were generated and built with nvcc, not run" in out
    assert main(["check", "kda", "--T", "70"]) == 0
    assert "kda: no kernel template yet for its form: the decay is per-K" in capsys.readouterr().out


def test_check_without_nvcc_says_it_built_nothing(capsys, monkeypatch, request):
    """No nvcc on the PATH: the kernels are generated and lowered, and the report says that only."""
    import shutil

    if shutil.which("nvcc"):
        request.getfixturevalue("built")  # the session's kernels, lowered already
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["check", "gdn", "--T", "70", "--heads", "2/8", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "gdn_forward (bv32): lowered for sm_90a" in out and "nvcc not found, not built" in out
    assert "nvcc not found: the kernels were generated and lowered, not built or run" in out
    assert "built for sm_90a" not in out


@pytest.mark.nvcc
def test_build_fills_the_cache_and_a_second_run_reuses_it(capsys, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path))
    assert main(["build", "2/8", "--workers", "2"]) == 0
    # a forward config per width, prepare one head a CTA and four (GVA), cp_plan and cp_chain once; the
    # backward's states pass per width, the backward and its chain-only build (the backward split's)
    count = 2 * len(FORWARD_WIDTHS) + 6
    out = capsys.readouterr().out
    assert f"[{count}/{count}] 2/8" in out and f"gdnc build: {count} compiled, 0 already in the cache" in out
    sources = list(tmp_path.glob("*/sources/*/*.py"))
    assert {p.name.split("-")[0] for p in sources} == {"gdn_prepare", "gdn_forward", "cp_plan", "cp_chain",
                                                        "gdn_backward"}
    start = time.perf_counter()
    assert main(["build", "2/8", "--workers", "2"]) == 0
    assert f"gdnc build: 0 compiled, {count} already in the cache" in capsys.readouterr().out
    assert time.perf_counter() - start < 10  # found in the manifest: nothing lowered or compiled
    # a fresh process finds the kernels of a short and a split call's plans without the compiler
    warm = subprocess.run([sys.executable, "-c", WARM_PROCESS], capture_output=True, text=True,
                          env={**os.environ, "GDNC_CACHE_DIR": str(tmp_path)})
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.split() == ["gdn_prepare", "gdn_forward", "gdn_prepare", "gdn_forward", "cp_plan", "cp_chain",
                                   "imported:", "[]"]


WARM_PROCESS = """
import sys
import torch
from gdnc.emit.cache import library_signature
from gdnc.emit.config import Heads
from gdnc.reference.problem import check_arguments
from gdnc.runtime.kernels import loaded
from gdnc.runtime.policy import DEFAULT_POLICY, Call

heads = Heads(2, 8)
q = torch.randn(1, 64, 2, 128); v = torch.randn(1, 64, 8, 128)
check_arguments(library_signature("gdn"), q, q, v, scale=None, initial_state=None, cu_seqlens=None,
                inputs={"g": -torch.rand(1, 64, 8), "beta": torch.rand(1, 64, 8)})
for tokens in (1024, 32768):
    for name, config in DEFAULT_POLICY.plan(Call(heads, tokens, 1, 132)).kernels().items():
        loaded("gdn", name, heads, config)
        print(name)
print("imported:", [m for m in ("sympy", "jinja2", "optuna") if m in sys.modules])
"""


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
    assert written == sorted(["gdn_prepare_heads1.py", "gdn_prepare_heads2.py", "cp_plan.py", "cp_chain.py",
                              "gdn_backward_serial.py", "gdn_backward_serial-state_gradient_only.py"]
                             + [f"gdn_forward_bv{w}{states}.py" for w in FORWARD_WIDTHS for states in ("", "-store_states")])
    assert sorted(capsys.readouterr().out.split()) == [str(tmp_path / name) for name in written]
    for path in tmp_path.iterdir():
        source = path.read_text()
        compile(source, str(path), "exec")
        assert gdnc.get_variant("gdn").ir_hash in source and "# recurrence:" in source
    assert "block_v=64" in (tmp_path / "gdn_forward_bv64.py").read_text()
    assert "h_qk=16, h_v=32" in (tmp_path / "gdn_prepare_heads1.py").read_text()
    assert "heads_per_cta=2" in (tmp_path / "gdn_prepare_heads2.py").read_text()


@pytest.mark.parametrize("argv,message", [
    (["kda", "--hq", "2", "--hv", "8"], "gdnc emit: kda: no kernel template yet for its form: the decay is per-K"),
    (["gdn", "--hq", "16", "--hv", "30"], "gdnc emit: Heads: h_v=30 must be a multiple of h_qk=16"),
    (["gdn", "--hq", "2", "--hv", "8", "--block-v", "48"], "gdnc emit: ForwardConfig.block_v must be one of"),
    (["gdn", "--hq", "2", "--hv", "8", "--k", "64"], "gdnc emit: the forward kernel is written for K = 128, got K=64"),
])
def test_emit_refuses_what_it_cannot_write(argv, message, tmp_path, capsys):
    assert main(["emit", *argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())


def test_emit_writes_the_forward_at_the_blocks_asked_for(tmp_path, capsys):
    """--block-v: the forward at those V blocks; V = 64 takes blocks 32 and 64 only (and no backward,
    written for V = 128)."""
    assert main(["emit", "gdn", "--hq", "2", "--hv", "8", "--v", "64", "--block-v", "32", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp_chain.py", "cp_plan.py", "gdn_forward_bv32.py",
                                                         "gdn_prepare_heads1.py", "gdn_prepare_heads4.py"]
