"""The emitter on CPU: templates render for every benchmark head configuration, lower for sm_90a,
and nvcc builds them with wgmma, TMA, the expected launch size and no register spills."""
import ast
import shutil

import pytest

import gdnc
from gdnc.emit.build import lower_cuda, nvcc_report
from gdnc.emit.config import ForwardConfig, Heads, InverseConfig
from gdnc.emit.render import render
from gdnc.ir.classify import UnsupportedRecurrence

BENCH_HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16), (32, 32)]
GDN = gdnc.get_variant("gdn")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gdnc-cache"))


@pytest.mark.parametrize("h_qk,h_v", BENCH_HEADS)
def test_render_is_python_with_the_header(h_qk, h_v):
    sources = render(GDN, Heads(h_qk, h_v))
    assert set(sources) == {"gdn_inverse", "gdn_forward"}
    for name, src in sources.items():
        ast.parse(src)
        assert GDN.ir_hash in src and GDN.equation() in src
        assert f"heads:      Heads(h_qk={h_qk}, h_v={h_v}" in src
        assert "decay_mask(l; base=2, mode=inclusive)" in src  # the rewritten program, in the header
    assert "block_v=64" in sources["gdn_forward"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("h_qk,h_v", BENCH_HEADS)
def test_lower_and_nvcc(h_qk, h_v):
    config = ForwardConfig(block_v=64, threads=128, num_stages=2)
    sources = render(GDN, Heads(h_qk, h_v), config, InverseConfig())
    inverse = nvcc_report(lower_cuda(sources["gdn_inverse"], "gdn_inverse", GDN.ir_hash))
    forward = nvcc_report(lower_cuda(sources["gdn_forward"], "gdn_forward", GDN.ir_hash))
    for name, rep in (("inverse", inverse), ("forward", forward)):
        assert rep.wgmma, f"{name}: no wgmma in the generated CUDA"
        assert rep.spill_stores == rep.spill_loads == 0, f"{name}: register spills {rep}"
        assert rep.registers <= 255
    assert forward.tma, "forward: the pipelined loads are not TMA"
    assert inverse.launch_threads == 128
    # one consumer warpgroup (128 threads) plus TileLang's TMA producer warpgroup
    assert forward.launch_threads == 256


def test_unsupported_recurrence_is_refused_with_reason():
    with pytest.raises(UnsupportedRecurrence, match="no kernel template yet.*per-K"):
        render(gdnc.get_variant("kda"), Heads(2, 4))


def test_config_checks():
    with pytest.raises(ValueError, match="block_v must be 32, 64 or 128 and divide V=96"):
        render(GDN, Heads(2, 4, 128, 96), ForwardConfig(block_v=64))
    with pytest.raises(ValueError, match="h_v=6 must be a multiple of h_qk=4"):
        Heads(4, 6)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Heads(2, 4, dtype="float32")


def test_templates_go_by_the_math_not_the_name():
    from gdnc.ir import Input

    renamed = GDN.replace(name="my_gdn")
    assert set(render(renamed, Heads(2, 8))) == {"gdn_inverse", "gdn_forward"}
    h, beta = Input("h"), Input("beta")
    other_gate = GDN.replace(update=gdnc.exp(h) * (gdnc.I - beta * gdnc.k * gdnc.k.T) * gdnc.S
                             + beta * gdnc.k * gdnc.v.T)
    with pytest.raises(UnsupportedRecurrence, match="need the decay exp\\(g\\)"):
        render(other_gate, Heads(2, 8))
