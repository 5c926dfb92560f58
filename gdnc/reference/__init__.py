"""Executors derived from the IR, in float64 by default: the oracles for every kernel gdnc emits."""
from gdnc.reference.chunked import chunked
from gdnc.reference.recurrent import recurrent

__all__ = ["chunked", "recurrent"]
