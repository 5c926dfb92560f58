"""Built kernels, found without the compiler.

Everything lives under ``$GDNC_CACHE_DIR`` (default ~/.cache/gdnc), in a folder per TileLang and
nvcc version (gdnc.emit.build.versions):

    sources/<ir hash>/<kernel>-<source digest>.py     rendered TileLang sources, for reading and loading
    tilelang/                                         TileLang's compiled kernels (keyed on their TIR)
    cuda/<source digest>.cu                           the CUDA C++ each source lowers to
    reports/<source digest>.json                      what nvcc made of it (registers, spills)
    manifest/<compiler digest>/kernels/<ir hash>/<kernel>-<key digest>.json
                                                      one entry per built kernel: its key and its source
    manifest/<compiler digest>/recurrences/<name>.json
                                                      a built-in recurrence's signature and IR hash

A manifest entry is keyed on (IR hash, kernel, heads, config, target, pass configs) under the
versions' folder and the compiler digest (gdnc's version, templates and the code that derives and
fills them: a change there can change a rendered source for the same key). A process that finds
its kernels' entries loads them through TileLang's cache without importing sympy or jinja2; one
that does not renders them (gdnc.emit.render), compiles them and writes the entries.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from gdnc.emit import build
from gdnc.emit.config import Heads
from gdnc.emit.registry import KernelSpec, spec
from gdnc.ir.signature import Signature

PACKAGE = Path(__file__).resolve().parent.parent
# what a rendered source is made from, besides its key: the IR's derivation, the passes, the
# emitter and the templates
COMPILER_PARTS = ("ir", "passes", "emit", "templates")


@functools.lru_cache(maxsize=1)
def compiler_digest() -> str:
    """A digest of gdnc's version and every file that turns a recurrence and a config into a
    rendered source (reading them takes milliseconds; nothing is imported)."""
    digest = hashlib.sha256((PACKAGE / "version.py").read_bytes())
    for part in COMPILER_PARTS:
        for path in sorted((PACKAGE / part).glob("*")):
            if path.suffix in (".py", ".jinja"):
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("GDNC_CACHE_DIR", Path.home() / ".cache" / "gdnc")) / build.versions()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def source_digest(source: str) -> str:
    """A rendered source (which holds heads and config) with the target and pass configs it is built for."""
    return _digest(source + repr(build.TARGET) + repr(sorted(build.PASS_CONFIGS.items())))


def materialize(source: str, kernel: str, ir_hash: str) -> Path:
    """The rendered source as a file under the cache (TileLang parses kernels from their files)."""
    path = cache_root() / "sources" / ir_hash / f"{kernel}-{source_digest(source)}.py"
    if not path.exists():
        _write_atomically(path, source)
    return path


def lower(source: str, kernel: str, ir_hash: str) -> str:
    """The CUDA C++ of a rendered source, for sm_90a (gdnc.emit.build.lower_cuda; lowered once, then
    read from the cache)."""
    path = cache_root() / "cuda" / f"{source_digest(source)}.cu"
    if path.exists():
        return path.read_text()
    cuda = build.lower_cuda(materialize(source, kernel, ir_hash))
    _write_atomically(path, cuda)
    return cuda


def report(source: str, kernel: str, ir_hash: str) -> build.NvccReport:
    """What nvcc makes of a rendered source (compiled once, then read from the cache)."""
    path = cache_root() / "reports" / f"{source_digest(source)}.json"
    if path.exists():
        return build.NvccReport(**json.loads(path.read_text()))
    result = build.nvcc_report(lower(source, kernel, ir_hash))
    _write_atomically(path, json.dumps(dataclasses.asdict(result)))
    return result


def _key(ir_hash: str, kernel: str, heads: Heads, config) -> dict:
    """What a built kernel is keyed on (under the versions' folder and the compiler digest)."""
    return {"kernel": kernel, "ir_hash": ir_hash, "heads": dataclasses.asdict(heads),
            "config": None if config is None else dataclasses.asdict(config), "target": build.TARGET,
            "pass_configs": build.PASS_CONFIGS}


def entry_path(ir_hash: str, kernel: str, heads: Heads, config) -> Path:
    """Where the manifest entry of this kernel is (whether or not it exists)."""
    key = _digest(json.dumps(_key(ir_hash, kernel, heads, config), sort_keys=True))
    return cache_root() / "manifest" / compiler_digest() / "kernels" / ir_hash / f"{kernel}-{key}.json"


def find(ir_hash: str, kernel: str, heads: Heads, config) -> Path | None:
    """The rendered source of a built kernel, or None where it is not in the manifest."""
    path = entry_path(ir_hash, kernel, heads, config)
    if not path.exists():
        return None
    source = cache_root() / json.loads(path.read_text())["source"]
    return source if source.exists() else None


def record(ir_hash: str, kernel: str, heads: Heads, config, source: Path) -> None:
    """Enter a compiled kernel in the manifest (after TileLang has it in its cache)."""
    entry = {**_key(ir_hash, kernel, heads, config), "versions": build.versions(), "compiler": compiler_digest(),
             "source": str(source.relative_to(cache_root()))}
    _write_atomically(entry_path(ir_hash, kernel, heads, config), json.dumps(entry, indent=1))


@functools.lru_cache(maxsize=None)
def library_signature(name: str) -> Signature:
    """A built-in recurrence's signature (with its IR hash): from the cache, where a build entered it
    (enter_signature), else derived from the IR (which loads sympy); once per process (the op asks
    on every call)."""
    path = _signature_path(name)
    if path.exists():
        return Signature.from_dict(json.loads(path.read_text()))
    from gdnc.ir.library import get_variant

    return get_variant(name).signature


def _signature_path(name: str) -> Path:
    return cache_root() / "manifest" / compiler_digest() / "recurrences" / f"{name}.json"


def enter_signature(name: str) -> None:
    """Enter a built-in recurrence's signature in this cache (with its kernels: a process that finds
    them finds it, and checks its calls without the IR)."""
    path = _signature_path(name)
    if not path.exists():
        _write_atomically(path, json.dumps(library_signature(name).as_dict(), indent=1))


class Kernel:
    """A compiled kernel, called with its arguments by name (its KernelSpec's declaration)."""

    def __init__(self, declared: KernelSpec, config, compiled):
        self.spec, self.config, self.compiled = declared, config, compiled
        self._names = tuple(p.name for p in declared.params_for(config))

    def __call__(self, **args):
        return self.compiled(*self.spec.bind(self._names, args))


def _ir_hash(recurrence) -> str:
    """The IR hash of a Recurrence, or of a built-in one named by ``recurrence`` (without sympy)."""
    return library_signature(recurrence).ir_hash if isinstance(recurrence, str) else recurrence.ir_hash


def _recurrence(recurrence):
    if isinstance(recurrence, str):
        from gdnc.ir.library import get_variant

        return get_variant(recurrence)
    return recurrence


@dataclasses.dataclass(frozen=True)
class Job:
    """One kernel to build: its recurrence's IR hash, name, heads, config and rendered source."""

    ir_hash: str
    kernel: str
    heads: Heads
    config: object
    source: str


def render_job(recurrence, kernel: str, heads: Heads, config) -> Job:
    """Render a kernel (recurrence: a Recurrence, or a built-in one's name, whose signature is then
    entered too: a process that finds the kernel finds it) into a build job."""
    from gdnc.emit.render import render

    if isinstance(recurrence, str):
        enter_signature(recurrence)
    rec = _recurrence(recurrence)
    return Job(rec.ir_hash, kernel, heads, config, render(rec, kernel, heads, config))


def compile_job(job: Job):
    """Compile a job through TileLang's cache and enter it in the manifest; the runnable kernel."""
    path = materialize(job.source, job.kernel, job.ir_hash)
    compiled = build.compile_kernel(path, cache_root() / "tilelang")
    record(job.ir_hash, job.kernel, job.heads, job.config, path)
    return compiled


def _compile_in_worker(job: Job) -> None:
    compile_job(job)  # the runnable kernel stays in the worker: only the caches matter


def lower_job(job: Job) -> str:
    """A job's CUDA C++ (lower)."""
    return lower(job.source, job.kernel, job.ir_hash)


def report_job(job: Job) -> build.NvccReport:
    """What nvcc makes of a job's source (report)."""
    return report(job.source, job.kernel, job.ir_hash)


def run_jobs(work, jobs: list[Job], workers: int, progress=None) -> list:
    """``work(job)`` for every job, in ``workers`` processes where there are several jobs (spawned:
    the caller may hold a CUDA context); ``progress(done, job)`` as each ends. Results in job order."""
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for done, job in enumerate(jobs, 1):
            results.append(work(job))
            if progress:
                progress(done, job)
        return results
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(work, job): i for i, job in enumerate(jobs)}
        results = [None] * len(jobs)
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if progress:
                progress(done, jobs[futures[future]])
    return results


def load(recurrence, kernel: str, heads: Heads, config=None) -> Kernel:
    """The runnable ``kernel`` of ``recurrence`` (a Recurrence, or a built-in one's name) for
    ``heads`` and ``config``: from the manifest if it was built (no sympy or jinja2 imported), else
    rendered, compiled and entered."""
    declared = spec(kernel)
    if declared.config is not None and config is None:
        config = declared.config()
    source = find(_ir_hash(recurrence), kernel, heads, config)
    if source is not None:
        compiled = build.compile_kernel(source, cache_root() / "tilelang")
    else:
        compiled = compile_job(render_job(recurrence, kernel, heads, config))
    return Kernel(declared, config, compiled)


def build_many(jobs: list[Job], workers: int, progress=None) -> int:
    """Compile the jobs not yet in the manifest, in ``workers`` processes; ``progress(done, job)``
    after each. Returns how many were compiled."""
    missing = [job for job in jobs if find(job.ir_hash, job.kernel, job.heads, job.config) is None]
    run_jobs(_compile_in_worker, missing, workers, progress)
    return len(missing)
