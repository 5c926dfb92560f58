"""Forward benchmark: gdnc and its peers on the shapes of anchors.md. See gdnc/bench/.

    python benchmarks/bench_forward.py --quick
    python benchmarks/bench_forward.py --shapes 'h16-32_*' --out /tmp/bench
"""

import sys
from pathlib import Path

# Runs from a checkout without installing gdnc.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdnc.bench.run import main

if __name__ == "__main__":
    raise SystemExit(main())
