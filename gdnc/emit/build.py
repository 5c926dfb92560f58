"""Build a rendered kernel: lower it to CUDA for sm_90a (no GPU needed), report what nvcc made of
it, and compile it into a runnable TileLang kernel. Works on files; where they live and how they
are keyed is gdnc.emit.cache's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

TARGET = {"kind": "cuda", "arch": "sm_90a"}
PASS_CONFIGS = {"tl.enable_fast_math": True}


def versions() -> str:
    """TileLang and nvcc versions: what a compiled kernel depends on besides its source (the nvcc
    on the PATH now: a process may change its PATH)."""
    return _versions(shutil.which("nvcc"))


@functools.lru_cache(maxsize=None)
def _versions(nvcc: str | None) -> str:
    tilelang = "none"
    if importlib.util.find_spec("tilelang") is not None:  # read from its metadata: importing tilelang costs seconds
        tilelang = metadata.version("tilelang")
    release = "none"
    if nvcc is not None:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"release ([\d.]+)", out)
        release = found.group(1) if found else "unknown"
    return f"tilelang-{tilelang}-nvcc-{release}"


def load_prim_func(path: Path):
    """The TileLang prim_func a rendered source file builds (TileLang parses kernels from files)."""
    spec = importlib.util.spec_from_file_location(f"gdnc_generated_{path.stem.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def lower_artifact(path: Path):
    """What TileLang lowers a rendered source file to, for sm_90a (its CompiledArtifact: the CUDA C++
    and the device module); needs no GPU."""
    import tilelang
    from tilelang import tvm
    from tvm.target import Target

    target = Target(TARGET)
    with tvm.transform.PassContext(opt_level=3, config=PASS_CONFIGS), target:
        return tilelang.lower(load_prim_func(path), target=target)


def lower_cuda(path: Path) -> str:
    """The CUDA C++ TileLang lowers a rendered source file to, for sm_90a; needs no GPU."""
    return lower_artifact(path).kernel_source


def dynamic_shared_memory(artifact) -> int:
    """The bytes of dynamic shared memory a lowered kernel (lower_artifact) launches with."""
    return max(int(func.attrs["dyn_shared_memory_buf"]) for func in artifact.device_mod.functions.values()
               if func.attrs is not None and "dyn_shared_memory_buf" in func.attrs)


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
    tl_dir = Path(importlib.util.find_spec("tilelang").origin).parent
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


@contextlib.contextmanager
def tilelang_cache(directory: Path):
    """TileLang's kernel cache in ``directory`` while the block runs (TileLang reads the variable at
    each lookup); the caller's setting, if any, is restored after."""
    before = os.environ.get("TILELANG_CACHE_DIR")
    os.environ["TILELANG_CACHE_DIR"] = str(directory)
    try:
        yield
    finally:
        if before is None:
            del os.environ["TILELANG_CACHE_DIR"]
        else:
            os.environ["TILELANG_CACHE_DIR"] = before


def compile_kernel(path: Path, tilelang_dir: Path):
    """A runnable TileLang kernel from a rendered source file, through TileLang's cache in
    ``tilelang_dir``: a kernel compiled there before (keyed on its TIR) is loaded, not rebuilt."""
    import tilelang

    with tilelang_cache(tilelang_dir):
        return tilelang.compile(load_prim_func(path), target=TARGET, execution_backend="tvm_ffi",
                                pass_configs=PASS_CONFIGS)
