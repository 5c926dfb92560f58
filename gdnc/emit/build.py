"""Build rendered kernels: lower to CUDA for sm_90a (no GPU needed), report what nvcc made of it,
and compile for running, with an on-disk cache keyed on the IR hash, the config, the target and the
TileLang and nvcc versions.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

TARGET = {"kind": "cuda", "arch": "sm_90a"}
PASS_CONFIGS = {"tl.enable_fast_math": True}


def materialize(source: str, name: str, ir_hash: str) -> Path:
    """The rendered source as a file under the cache (TileLang parses kernels from their files)."""
    path = cache_root() / "sources" / (cache_key(ir_hash, name, source) + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        tmp.replace(path)
    return path


def load(path: Path):
    """The TileLang prim_func a rendered source file builds."""
    spec = importlib.util.spec_from_file_location(f"gdnc_generated_{path.stem.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def lower_cuda(source: str, name: str, ir_hash: str) -> str:
    """Lower a rendered kernel to CUDA C++ for sm_90a; works on a machine without a GPU."""
    import tilelang
    from tilelang import tvm
    from tvm.target import Target

    target = Target(TARGET)
    with tvm.transform.PassContext(opt_level=3, config=PASS_CONFIGS), target:
        return tilelang.lower(load(materialize(source, name, ir_hash)), target=target).kernel_source


@dataclasses.dataclass(frozen=True)
class NvccReport:
    """What ptxas reports for one kernel, and what the CUDA source launches and uses."""

    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    launch_threads: int
    wgmma: bool
    tma: bool
    setmaxnreg: bool


def nvcc_report(cuda_source: str) -> NvccReport:
    """Compile CUDA from lower_cuda with nvcc for sm_90a and read the ptxas report."""
    tl_dir = Path(__import__("tilelang").__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.cu"
        src.write_text(cuda_source)
        cmd = ["nvcc", "--cubin", "-O3", "-gencode", "arch=compute_90a,code=sm_90a", "-std=c++20", "-w",
               "-Xptxas", "-v", "--use_fast_math", f"-I{tl_dir / 'src'}",
               f"-I{tl_dir / '3rdparty' / 'cutlass' / 'include'}", str(src), "-o", str(Path(tmp) / "k.cubin")]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nvcc failed on the generated kernel:\n{done.stderr[-4000:]}")
    log = done.stderr

    def number(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    launch = re.search(r"__launch_bounds__\((\d+)", cuda_source)
    return NvccReport(registers=number(r"Used (\d+) registers"), spill_stores=number(r"(\d+) bytes spill stores"),
                      spill_loads=number(r"(\d+) bytes spill loads"), stack_frame=number(r"(\d+) bytes stack frame"),
                      launch_threads=int(launch.group(1)) if launch else 0,
                      wgmma="wgmma" in cuda_source, tma="CUtensorMap" in cuda_source or "tma_load" in cuda_source,
                      setmaxnreg=any(word in cuda_source for word in ("setmaxnreg", "warpgroup_reg_alloc")))


@functools.lru_cache(maxsize=1)
def versions() -> str:
    """TileLang and nvcc versions: part of every cache key."""
    import tilelang

    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
        nvcc = re.search(r"release ([\d.]+)", out).group(1)
    except (OSError, AttributeError):
        nvcc = "none"
    return f"tilelang-{tilelang.__version__}-nvcc-{nvcc}"


def cache_root() -> Path:
    return Path(os.environ.get("GDNC_CACHE_DIR", Path.home() / ".cache" / "gdnc")) / versions()


def cache_key(ir_hash: str, kernel: str, source: str) -> str:
    """IR hash + kernel + a hash of the rendered source (which holds heads and config) + target."""
    digest = hashlib.sha256((source + repr(TARGET) + repr(sorted(PASS_CONFIGS.items()))).encode()).hexdigest()[:16]
    return f"{ir_hash}/{kernel}-{digest}"


def _use_cache_dir() -> None:
    os.environ["TILELANG_CACHE_DIR"] = str(cache_root() / "tilelang")


def compile_kernel(source: str, name: str, ir_hash: str):
    """A runnable TileLang kernel. The rendered source is kept under the cache for reading; TileLang's
    own cache, pointed into gdnc's versioned cache directory, makes a second process skip compiling."""
    import tilelang

    _use_cache_dir()
    path = materialize(source, name, ir_hash)
    kernel = tilelang.compile(load(path), target=TARGET, execution_backend="tvm_ffi", pass_configs=PASS_CONFIGS)
    _built_stamp(path).touch()
    return kernel


def _built_stamp(source_path: Path) -> Path:
    """Marks a rendered source whose compiled kernel is in TileLang's cache under cache_root()."""
    return source_path.with_suffix(".built")


def is_built(source: str, name: str, ir_hash: str) -> bool:
    """Whether this rendered kernel was compiled into the cache already (loading it needs no pool)."""
    return _built_stamp(cache_root() / "sources" / (cache_key(ir_hash, name, source) + ".py")).exists()


def _warm(args) -> tuple:
    key, source, ir_hash = args
    compile_kernel(source, key[-1], ir_hash)
    return key


def compile_many(sources: dict, workers: int, ir_hash: str, progress=None) -> None:
    """Compile independent kernels of one recurrence in parallel processes, filling the on-disk cache.
    ``sources`` maps keys whose last element is the kernel name to rendered sources."""
    jobs = [(key, src, ir_hash) for key, src in sources.items()]
    # spawn, not fork: the caller may already hold a CUDA context
    with ProcessPoolExecutor(max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, key in enumerate(pool.map(_warm, jobs), 1):
            if progress:
                progress(done, key)


def compile_all(sources: dict[str, str], ir_hash: str, workers: int | None = None) -> dict:
    """Compile a set of kernels (in parallel when there is more than one), then load them here."""
    if workers is None:
        workers = min(len(sources), os.cpu_count() or 1)
    missing = {name: src for name, src in sources.items() if not is_built(src, name, ir_hash)}
    if workers > 1 and len(missing) > 1:  # a process pool costs seconds: only for kernels still to compile
        compile_many({(name,): src for name, src in missing.items()}, workers, ir_hash)
    return {name: compile_kernel(source, name, ir_hash) for name, source in sources.items()}
