"""The recurrence IR: symbols, the Recurrence, its classification, the built-in library, and the
chunk programs derived from it. Symbolic (sympy), no torch; attributes load on first use, so that
gdnc.ir.program and gdnc.ir.signature (plain Python) are importable without sympy."""
from gdnc._lazy import lazy_exports

_EXPORTS = {
    **{n: "gdnc.ir.canonical" for n in ("CanonicalForm", "UnsupportedRecurrence", "classify")},
    **{n: "gdnc.ir.library" for n in ("get_variant", "variants")},
    "Recurrence": "gdnc.ir.recurrence",
    **{n: "gdnc.ir.symbols" for n in ("I", "Input", "K", "Key", "S", "V", "diag", "exp", "hadamard", "k", "q", "v")},
    **{n: "gdnc.ir.signature" for n in ("InputSpec", "Signature")},
    "CHUNK_SIZE": "gdnc.ir.program",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
