"""gdnc: a compiler from gated linear-attention recurrences to fast Hopper kernels.

Attributes load on first use: ``gdnc.chunk_gated_delta_rule`` needs torch and the compiled kernels,
not the IR's sympy or the emitter's jinja2; ``gdnc.Recurrence`` needs sympy, not torch.
"""
from gdnc._lazy import lazy_exports
from gdnc.version import __version__

_IR = ("I", "Input", "Key", "Recurrence", "S", "UnsupportedRecurrence", "classify", "diag", "exp", "get_variant",
       "hadamard", "k", "q", "v", "variants")
__all__ = ["__version__", "chunk_gated_delta_rule", "reference", *_IR]
__getattr__, __dir__ = lazy_exports(__name__, {"chunk_gated_delta_rule": "gdnc.runtime.ops",
                                               "reference": "gdnc.reference", **{n: "gdnc.ir" for n in _IR}})
