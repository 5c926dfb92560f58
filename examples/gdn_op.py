"""FLA's chunk_gated_delta_rule, from gdnc: generated kernels on a Hopper GPU, the reference elsewhere.

Runs anywhere: without a Hopper GPU gdnc says once that it uses the chunked reference.
"""
import torch
import torch.nn.functional as F

import gdnc
from gdnc.reference.compare import relative_error

device = "cuda" if torch.cuda.is_available() else "cpu"
B, T, H, HV, K, V = 1, 1000, 4, 8, 128, 128  # GVA: two value heads per q/k head
cu_seqlens = torch.tensor([0, 1, 300, 1000], device=device, dtype=torch.int32)  # three packed sequences
q = F.normalize(torch.randn(B, T, H, K, device=device), dim=-1).bfloat16()
k = F.normalize(torch.randn(B, T, H, K, device=device), dim=-1).bfloat16()
v = torch.randn(B, T, HV, V, device=device).bfloat16()
g = F.logsigmoid(torch.randn(B, T, HV, device=device))  # log-space decay
beta = torch.rand(B, T, HV, device=device)
h0 = torch.randn(3, HV, K, V, device=device)

o, ht = gdnc.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                    cu_seqlens=cu_seqlens)
o_ref, ht_ref = gdnc.reference.chunked(gdnc.get_variant("gdn"), q.double(), k.double(), v.double(),
                                       g=g.double(), beta=beta.double(), initial_state=h0.double(),
                                       output_final_state=True, cu_seqlens=cu_seqlens)
print(f"o {tuple(o.shape)} {o.dtype}, final state {tuple(ht.shape)} {ht.dtype}")
print(f"relative error vs float64: o {relative_error(o, o_ref):.1e}, final state {relative_error(ht, ht_ref):.1e}")
