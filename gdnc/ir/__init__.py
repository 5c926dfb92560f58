"""The recurrence IR: symbols, the Recurrence, its classification, the built-in library."""
from gdnc.ir.classify import CanonicalForm, UnsupportedRecurrence, classify
from gdnc.ir.library import get_variant, variants
from gdnc.ir.recurrence import Recurrence
from gdnc.ir.symbols import I, Input, K, Key, S, V, diag, exp, hadamard, k, q, v

__all__ = ["CanonicalForm", "I", "Input", "K", "Key", "Recurrence", "S", "UnsupportedRecurrence", "V",
           "classify", "diag", "exp", "get_variant", "hadamard", "k", "q", "v", "variants"]
