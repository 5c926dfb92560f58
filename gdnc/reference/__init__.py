"""Executors derived from the IR, in float64 by default: the oracles for every kernel gdnc emits.
The executors load on first use: gdnc.reference.problem (the call's checks and layouts) needs
torch only, and the op checks its calls with it without loading sympy."""
from gdnc._lazy import lazy_exports

__all__ = ["chunked", "recurrent"]
__getattr__, __dir__ = lazy_exports(__name__, {"chunked": "gdnc.reference.chunked_form",
                                               "recurrent": "gdnc.reference.token_by_token"})
