"""Build every kernel the GPU tests load (each GPU test module's kernels_used), on a machine
without a GPU, into $GDNC_CACHE_DIR, so that the tests compile nothing on the GPU machine:

    GDNC_CACHE_DIR=$PWD/.devcache python benchmarks/build_test_kernels.py --workers 2 [--tests backward]
"""
import argparse
import importlib.util
import sys
import time
from pathlib import Path

from gdnc.check import job_label
from gdnc.emit.cache import build_many, render_job

TESTS = Path(__file__).resolve().parent.parent / "tests"
MODULES = ("forward", "backward")  # tests/test_gpu_<name>.py


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tests", nargs="+", choices=MODULES, default=MODULES, help="which GPU test modules")
    args = parser.parse_args(argv)
    used = []
    sys.path.insert(0, str(TESTS))  # the test modules import their conftest's helpers
    for name in args.tests:
        spec = importlib.util.spec_from_file_location(f"test_gpu_{name}", TESTS / f"test_gpu_{name}.py")
        tests = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tests)
        used += tests.kernels_used()
    jobs = [render_job("gdn", kernel, heads, config) for kernel, heads, config in dict.fromkeys(used)]
    start = time.perf_counter()

    def progress(done, job):
        print(f"[{done}] {job.heads.h_qk}/{job.heads.h_v} {job.heads.dtype} {job_label(job)} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)

    built = build_many(jobs, args.workers, progress)
    print(f"{built} built, {len(jobs) - built} already in the cache, {len(jobs)} in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
