"""SHA-256 of the CUDA every kernel the op may pick lowers to (the default policy's candidates for
the benchmark head configurations), to show a change left the generated kernels byte-identical.
No GPU needed; lowered CUDA is cached under $GDNC_CACHE_DIR.

    python benchmarks/cuda_digests.py --out digests.json [--compare before.json] [--workers 2]
"""
import argparse
import hashlib
import json
import sys

from gdnc.check import op_jobs
from gdnc.emit.cache import lower_job, run_jobs
from gdnc.emit.config import Heads
from gdnc.emit.registry import spec

HEADS = [(2, 8), (4, 16), (8, 32), (16, 64), (16, 32), (8, 24), (16, 48), (16, 16), (32, 32)]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare", default=None, help="an earlier --out: report every key that differs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    jobs = [job for hq, hv in HEADS for job in op_jobs("gdn", Heads(hq, hv))]
    digests = {}
    for job, cuda in zip(jobs, run_jobs(lower_job, jobs, args.workers)):
        key = f"{job.heads.h_qk}/{job.heads.h_v}/{job.kernel}/{spec(job.kernel).label(job.config)}"
        digests[key] = hashlib.sha256(cuda.encode()).hexdigest()
    with open(args.out, "w") as f:
        json.dump(digests, f, indent=1, sort_keys=True)
    print(f"{len(digests)} kernels lowered")
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        differ = sorted(k for k in before.keys() | digests.keys() if before.get(k) != digests.get(k))
        print(f"compared with {args.compare}: {len(before.keys() & digests.keys())} in both, "
              f"{len(differ)} differ or are missing on one side: {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
