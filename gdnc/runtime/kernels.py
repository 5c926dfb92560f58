"""The compiled kernels a process has loaded, by (recurrence, kernel, heads, config): the first call
of a configuration finds it in the cache's manifest (or builds it, gdnc.emit.cache); later calls
reuse the loaded kernel."""
from __future__ import annotations

import functools

from gdnc.emit.cache import Kernel, load
from gdnc.emit.config import Heads


@functools.lru_cache(maxsize=None)
def loaded(recurrence: str, kernel: str, heads: Heads, config) -> Kernel:
    """Kernel ``kernel`` of the built-in recurrence ``recurrence`` for ``heads`` and ``config``."""
    return load(recurrence, kernel, heads, config)
