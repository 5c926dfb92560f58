"""Child processes of `gdnc bench`: the warm-up workers and the cold-start runs.

Each child runs `python -m gdnc.bench.<module>` in the parent's process group, so whatever ends
the whole command (a device call's time limit) ends the children too; a child still running at the
deadline is killed by its id (a compiler it started finishes on its own). Children find this
checkout of gdnc first on their PYTHONPATH, however the parent was started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# The on-disk caches the benchmark's libraries compile into, and their folder under --cache-dir.
CACHE_FOLDERS = {"TILELANG_CACHE_DIR": "tilelang", "TRITON_CACHE_DIR": "triton", "GDNC_CACHE_DIR": "gdnc"}


def cache_env(root: Path) -> dict[str, str]:
    """TileLang's, Triton's and gdnc's cache variables, all pointing into `root`."""
    return {name: str(root / folder) for name, folder in CACHE_FOLDERS.items()}


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment with `overrides`, and this checkout first on PYTHONPATH."""
    env = {**os.environ, **overrides}
    checkout = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH")) if p)
    return env


def spawn(module: str, args: list[str], env: dict[str, str], log: Path,
          keep_stdout: bool = False) -> subprocess.Popen:
    """Start `python -m module args...`; stderr (and stdout unless keep_stdout) goes to `log`."""
    with open(log, "w") as sink:  # the child holds its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stderr=sink,
                                stdout=None if keep_stdout else sink)


def stop(proc: subprocess.Popen) -> None:
    """Kill a child that is still running."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def wait(procs: list[subprocess.Popen], deadline: float | None) -> list[int | None]:
    """Exit codes in order; None for a child still running at `deadline` (time.monotonic()),
    which is then stopped."""
    codes = []
    for proc in procs:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            codes.append(proc.wait(timeout))
        except subprocess.TimeoutExpired:
            stop(proc)
            codes.append(None)
    return codes


def log_tail(log: Path, lines: int = 3) -> str:
    """The last non-empty lines of a child's log, joined for one report line."""
    try:
        text = log.read_text(errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return " / ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])
