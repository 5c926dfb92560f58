import os
import shutil

import pytest
import torch

from gdnc.bench.shapes import BACKWARD_HEAD_CONFIGS
from gdnc.emit.config import FORWARD_WIDTHS, LOCAL_STATE_GRADIENT, BackwardConfig, ForwardConfig, Heads, PrepareConfig

BENCH_HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16), (32, 32)]


def pytest_collection_modifyitems(items):
    """Tests marked nvcc build CUDA with nvcc: skipped, saying so, on a machine without it."""
    if shutil.which("nvcc") is None:
        skip = pytest.mark.skip(reason="nvcc is not installed on this machine")
        for item in items:
            if "nvcc" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def gen():
    """A fresh generator per test, seeded from the OS: every run draws new inputs."""
    g = torch.Generator()
    g.seed()
    return g


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """One kernel cache for the session (not the user's): every kernel is lowered and built once,
    whichever tests ask for it. A test that must see an empty cache points GDNC_CACHE_DIR elsewhere."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GDNC_CACHE_DIR", str(tmp_path_factory.mktemp("gdnc-cache")))
        yield


def nvcc_cases() -> list[tuple[str, Heads, object]]:
    """Every (kernel, heads, config) the CPU tests lower and build with nvcc (tests/test_emit.py,
    test_cp.py, test_cli.py), so that the session builds them once, in parallel."""
    cases = []
    for h_qk, h_v in BENCH_HEADS:
        heads = Heads(h_qk, h_v)
        cases += [("gdn_forward", heads, ForwardConfig(block_v=128)), ("gdn_prepare", heads, PrepareConfig())]
        if h_v > h_qk:
            cases.append(("gdn_prepare", heads, PrepareConfig(heads_per_cta=h_v // h_qk)))
    two_eight, wide, mixed = Heads(2, 8), Heads(16, 32), Heads(16, 48)
    cases += [("gdn_forward", two_eight, ForwardConfig(block_v=w)) for w in FORWARD_WIDTHS]
    cases += [("gdn_forward", wide, ForwardConfig(block_v=64, m_role="prepare"))]
    cases += [("gdn_forward", wide, ForwardConfig(block_v=w, pair_gates="loader")) for w in (32, 64)]
    cases += [("gdn_prepare", two_eight, PrepareConfig(inverse="substitution")),
              ("gdn_prepare", mixed, PrepareConfig(order="head")),
              ("gdn_prepare", mixed, PrepareConfig(heads_per_cta=3, order="head"))]
    cases += [(kernel, Heads(*h), None) for h in ((2, 8), (16, 48), (16, 64)) for kernel in ("cp_plan", "cp_chain")]
    cases += [("gdn_backward", Heads(*h), BackwardConfig(roles="specialised")) for h in BACKWARD_HEAD_CONFIGS]
    cases += [("gdn_backward", Heads(16, 32), config) for config in (BackwardConfig(roles="serial"), LOCAL_STATE_GRADIENT)]
    cases += [("gdn_forward", two_eight, ForwardConfig(block_v=64, store_states=True))]
    return list(dict.fromkeys(cases))


@pytest.fixture(scope="session")
def built():
    """``built(kernel, heads, config)`` -> (CUDA source, NvccReport) of gdn's kernel, from the session
    cache, which the first use fills with every nvcc_cases() case in parallel processes."""
    from gdnc.emit import cache
    from gdnc.ir.library import get_variant

    gdn = get_variant("gdn")
    jobs = [cache.render_job(gdn, *case) for case in nvcc_cases()]
    cache.run_jobs(cache.report_job, jobs, os.cpu_count() or 1)

    def lookup(kernel: str, heads: Heads, config=None):
        job = cache.render_job(gdn, kernel, heads, config)
        return cache.lower_job(job), cache.report_job(job)

    return lookup


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
# the marks of a GPU test module: run with the outputs poisoned on a Hopper GPU, skipped saying why elsewhere
GPU_MARKS = ([pytest.mark.gpu, pytest.mark.usefixtures("poison")] if HOPPER else
             [pytest.mark.gpu, pytest.mark.skip(reason="needs a Hopper GPU (sm_90a); none is visible")])


@pytest.fixture
def poison(monkeypatch):
    """The op's output and gradient buffers NaN-filled before every kernel writes them (GPU tests: an
    element a kernel leaves unwritten must show)."""
    monkeypatch.setenv("GDNC_POISON_OUTPUTS", "1")


def write_gpu_report(variable: str, cases: list) -> None:
    """The checked cases of a GPU test module as JSON (with the card and versions) to the path in
    environment variable ``variable``, when it is set."""
    import json

    import gdnc

    path = os.environ.get(variable)
    if path and cases:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "tilelang": __import__("tilelang").__version__, "gdnc": gdnc.__version__}
        with open(path, "w") as f:
            json.dump({"meta": meta, "cases": cases}, f, indent=1)


def offsets(lengths):
    """cu_seqlens [N + 1] int32 on the GPU for sequences of these lengths."""
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), device="cuda", dtype=torch.int32)


def gpu_inputs(T, H, HV, *, B=1, N=1, gates="normal", h0=True, K=128, V=128, dtype=torch.bfloat16, beta_max=1.0,
               k_norm=1.0):
    """Fresh random GPU inputs (q, k, v, g, beta, h0 or None) in FLA's layouts: q, k L2-normalised (k scaled
    to ``k_norm``), g = logsigmoid(randn) ("strong": about −30 a token; "mixed": half the heads 0, half
    −30), beta uniform in [0, beta_max)."""
    import torch.nn.functional as F

    dev = "cuda"
    q = F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(dtype)
    k = (k_norm * F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1)).to(dtype)
    v = torch.randn(B, T, HV, V, device=dev).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, HV, device=dev))
    if gates == "strong":
        g = -30.0 + torch.randn(B, T, HV, device=dev).clamp(-3, 3)
    elif gates == "mixed":  # half the heads without decay, the others strong
        g[..., ::2] = 0.0
        g[..., 1::2] = -30.0
    beta = beta_max * torch.rand(B, T, HV, device=dev)
    state = torch.randn(N, HV, K, V, device=dev) if h0 else None
    return q, k, v, g, beta, state

