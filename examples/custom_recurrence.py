"""Alter Gated DeltaNet into a recurrence of your own and run both references on it.

The variant: GDN whose write is gated per V-channel by w (a learned output gate on the value) and
whose decay has an extra per-K part a — S_t = exp(g) (I − β k kᵀ) diag(exp(a)) S_{t−1} + k (w ⊙ v)ᵀ.
gdnc classifies it, derives its chunked form, and checks it against the token-by-token evaluation.
"""
import torch
import torch.nn.functional as F

import gdnc
from gdnc.ir import I, Input, S, diag, exp, hadamard, k, v
from gdnc.ir.describe import describe
from gdnc.reference.compare import relative_error

gdn = gdnc.get_variant("gdn")
g, beta = Input("g"), Input("beta")
a, w = Input("a", channel="K"), Input("w", channel="V")
mine = gdn.replace(name="gdn_gated_write",
                   update=exp(g) * (I - beta * k * k.T) * diag(exp(a)) * S + k * hadamard(w, v).T)
print(describe(gdnc.classify(mine)), "\n")

B, T, H, HV, K, V = 1, 300, 2, 4, 16, 16
q_, k_ = (F.normalize(torch.randn(B, T, H, K, dtype=torch.float64), dim=-1) for _ in range(2))
inputs = dict(g=F.logsigmoid(torch.randn(B, T, HV, dtype=torch.float64)),
              beta=torch.rand(B, T, HV, dtype=torch.float64),
              a=F.logsigmoid(torch.randn(B, T, HV, K, dtype=torch.float64)),
              w=torch.sigmoid(torch.randn(B, T, HV, V, dtype=torch.float64)))
v_ = torch.randn(B, T, HV, V, dtype=torch.float64)
h0 = torch.randn(B, HV, K, V, dtype=torch.float64)

for rec, extra in ((gdn, {}), (mine, {"a": inputs["a"], "w": inputs["w"]})):
    args = dict(initial_state=h0, output_final_state=True, g=inputs["g"], beta=inputs["beta"], **extra)
    o_tok, ht_tok = gdnc.reference.recurrent(rec, q_, k_, v_, **args)
    o_chk, ht_chk = gdnc.reference.chunked(rec, q_, k_, v_, chunk_size=64, **args)
    print(f"{rec.name:<16} chunked vs token-by-token: o {relative_error(o_chk, o_tok):.1e}, "
          f"final state {relative_error(ht_chk, ht_tok):.1e}")
