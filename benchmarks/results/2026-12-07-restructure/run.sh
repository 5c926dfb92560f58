#!/usr/bin/env bash
# The device call of 2026-12-07 (issue #16), carry [".devsite", ".devbase"]: the kernels built on the
# CPU machine (.devsite/gdnc-cache.tar.xz: benchmarks/build_test_kernels.py for this tree, `gdnc build
# 2/8 16/32 16/48 16/64` for 6c3ce55, whose gdnc package is .devbase/gdnc). Writes $OUT/run.tgz.
#   1. a warm first call in fresh processes (kernels in the cache), 6c3ce55 and this tree interleaved,
#      two shapes, then the first again, under python -X importtime (benchmarks/warm_start.py)
#   2. the GPU tests on this tree
#   3. both trees' op timed on the same shapes (benchmarks/time_op.py: CUDA-graph medians and eager calls)
set -u -o pipefail
tar -xJf .devsite/gdnc-cache.tar.xz && eval "$(bash .devsite/unpack-site)" || exit 1
export PYTHONUNBUFFERED=1 GDNC_CACHE_DIR=$PWD/.devcache
NEW=$PWD BASE=$PWD/.devbase W=/tmp/run SITE=$PYTHONPATH
mkdir -p "$W"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$W/gpu.csv"
python3 -c "import sys, torch, tilelang; print(sys.version.split()[0], torch.__version__, tilelang.__version__)" > "$W/versions.txt"
for round in 1 2; do
  shapes=("16/32 4096" "2/8 32768"); [ "$round" = 2 ] && shapes=("16/32 4096")
  for shape in "${shapes[@]}"; do
    for tree in base new; do
      root=$NEW; [ "$tree" = base ] && root=$BASE
      tag=${tree}_$(echo "$shape" | tr '/ ' '--')_$round
      PYTHONPATH=$root:$SITE python3 -X importtime benchmarks/warm_start.py $shape --out "$W/warm_$tag.json" \
        2> "$W/importtime_$tag.log" | cut -c1-220
    done
  done
done
GDNC_GPU_REPORT=$W/gpu_correctness.json PYTHONPATH=$NEW:$SITE python3 -m pytest -m gpu -q -p no:cacheprovider \
  tests/test_gpu_forward.py 2>&1 | tee "$W/gpu_tests.log" | tail -4
for tree in base new; do
  root=$NEW; [ "$tree" = base ] && root=$BASE
  PYTHONPATH=$root:$SITE python3 benchmarks/time_op.py --out "$W/time_$tree.json" 2>&1 | tee "$W/time_$tree.log"
done
tar -czf "$OUT/run.tgz" -C /tmp run
