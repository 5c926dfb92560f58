"""gdnc: a compiler from gated linear-attention recurrences to fast Hopper kernels."""
from gdnc import reference
from gdnc.ops import chunk_gated_delta_rule
from gdnc.ir import (
                     I,
                     Input,
                     Key,
                     Recurrence,
                     S,
                     UnsupportedRecurrence,
                     classify,
                     diag,
                     exp,
                     get_variant,
                     hadamard,
                     k,
                     q,
                     v,
                     variants,
)

__version__ = "0.1.0"

__all__ = ["chunk_gated_delta_rule", "I", "Input", "Key", "Recurrence", "S", "UnsupportedRecurrence", "classify", "diag", "exp",
           "get_variant", "hadamard", "k", "q", "reference", "v", "variants"]
