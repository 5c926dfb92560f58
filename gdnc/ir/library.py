"""The built-in recurrences, each written in the IR exactly as its paper's update reads.

Gates are log-space inputs (FLA's convention): a decay exp(g) with g <= 0 per token and head,
exp(g) per K-channel for GLA/KDA, a constant exp(g) per head for RetNet-style retention.
"""
from __future__ import annotations

from gdnc.ir.recurrence import Recurrence
from gdnc.ir.symbols import I, Input, Key, S, diag, exp, k, q, v


def _build() -> dict[str, Recurrence]:
    g, beta = Input("g"), Input("beta")
    g_head = Input("g", per="head")
    g_k = Input("g", channel="K")
    p = Key("p")
    read = S.T * q
    recs = [
        Recurrence("linear_attn", S + k * v.T, read,
                   description="linear attention: no decay, additive write"),
        Recurrence("simple_gla", exp(g) * S + k * v.T, read,
                   description="scalar decay per token and head (also Mamba2-SSD's form: k=B, v=dt*x, q=C)"),
        Recurrence("retention", exp(g_head) * S + k * v.T, read,
                   description="RetNet / Lightning: a constant decay per head, g given as [HV]"),
        Recurrence("gla", diag(exp(g_k)) * S + k * v.T, read,
                   description="gated linear attention: per-K-channel decay, g given as [B,T,HV,K]"),
        Recurrence("delta_rule", (I - beta * k * k.T) * S + beta * k * v.T, read,
                   description="DeltaNet: rank-1 erase along k, no decay"),
        Recurrence("gdn", exp(g) * (I - beta * k * k.T) * S + beta * k * v.T, read,
                   description="Gated DeltaNet: scalar decay and delta rule (FLA's chunk_gated_delta_rule)"),
        Recurrence("kda", (I - beta * k * k.T) * diag(exp(g_k)) * S + beta * k * v.T, read,
                   description="Kimi Delta Attention: per-K decay, then the delta rule"),
        Recurrence("comba", exp(g) * (I - beta * k * p.T) * S + beta * k * v.T, read,
                   description="Comba: the erase reads the state with its own key p ([B,T,H,K])"),
    ]
    return {r.name: r for r in recs}


LIBRARY: dict[str, Recurrence] = _build()


def variants() -> tuple[str, ...]:
    """The names of the built-in recurrences."""
    return tuple(LIBRARY)


def get_variant(name: str) -> Recurrence:
    """A built-in recurrence by name."""
    try:
        return LIBRARY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown variant {name!r}; the built-in variants are {', '.join(LIBRARY)}") from None
