"""Train the same small model with gdnc's op and with FLA's, same seed, and compare the loss curves.

    python benchmarks/train_compare.py --out DIR [--steps 300]

The model: token embedding, two Gated DeltaNet layers (2 q/k heads, 4 value heads of 128; projections to q, k, v, g, β, the op, an
output projection, a residual), a linear head. The task: associative recall, made here — each
sequence lists key-value pairs and then asks for the values of some keys again; the loss is on the
answers only. FLA runs with its backend dispatch on and FlashQLA's backend off (anchors.md). Writes
losses.json and loss.png (both curves and their difference).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, KEYS, PAIRS, QUERIES = 256, 128, 32, 16


def recall_batch(batch: int, generator: torch.Generator):
    """tokens [batch, 2·PAIRS + 2·QUERIES] and the positions and targets of the answers: keys are
    0..KEYS-1, values KEYS..VOCAB-1; a query is a key seen before, followed by its value."""
    keys = torch.stack([torch.randperm(KEYS, generator=generator)[:PAIRS] for _ in range(batch)])
    values = torch.randint(KEYS, VOCAB, (batch, PAIRS), generator=generator)
    asked = torch.randint(0, PAIRS, (batch, QUERIES), generator=generator)
    pairs = torch.stack([keys, values], dim=-1).flatten(1)
    queries = torch.stack([keys.gather(1, asked), values.gather(1, asked)], dim=-1).flatten(1)
    tokens = torch.cat([pairs, queries], dim=1)
    answer_positions = 2 * PAIRS + 2 * torch.arange(QUERIES) + 1  # predict token t from position t − 1
    return tokens, answer_positions


class GatedDeltaLayer(nn.Module):
    """q, k with h_qk heads, v, g, β with h_v (GVA), K = V = head_dim."""

    def __init__(self, dim: int, h_qk: int, h_v: int, head_dim: int, op):
        super().__init__()
        self.h_qk, self.h_v, self.head_dim, self.op = h_qk, h_v, head_dim, op
        self.qk = nn.Linear(dim, 2 * h_qk * head_dim, bias=False)
        self.v = nn.Linear(dim, h_v * head_dim, bias=False)
        self.gates = nn.Linear(dim, 2 * h_v)
        self.out = nn.Linear(h_v * head_dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        B, T, _ = x.shape
        h = self.norm(x)
        q, k = self.qk(h).view(B, T, 2, self.h_qk, self.head_dim).unbind(2)
        v = self.v(h).view(B, T, self.h_v, self.head_dim)
        a, b = self.gates(x).float().view(B, T, 2, self.h_v).unbind(2)
        g, beta = F.logsigmoid(a), torch.sigmoid(b)
        o, _ = self.op(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
        return x + self.out(o.reshape(B, T, -1))


class Model(nn.Module):
    def __init__(self, op, dim=256, h_qk=2, h_v=4, head_dim=128, layers=2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(GatedDeltaLayer(dim, h_qk, h_v, head_dim, op) for _ in range(layers))
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens).bfloat16()
        for layer in self.layers:
            x = layer(x)
        return self.head(x.float())


def train(op, steps: int, seed: int, batch: int = 32) -> list[float]:
    torch.manual_seed(seed)
    model = Model(op).cuda().bfloat16()
    model.head.float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    data = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        tokens, answers = recall_batch(batch, data)
        tokens = tokens.cuda()
        logits = model(tokens)[:, answers - 1]
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, answers].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ["FLA_FLASH_QLA"] = "0"
    import gdnc
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_op

    curves = {"gdnc": train(gdnc.chunk_gated_delta_rule, args.steps, args.seed),
              "FLA": train(fla_op, args.steps, args.seed)}
    args.out.mkdir(parents=True, exist_ok=True)
    gap = [abs(a - b) for a, b in zip(curves["gdnc"], curves["FLA"])]
    summary = {"steps": args.steps, "seed": args.seed, "device": torch.cuda.get_device_name(),
               "final": {n: c[-1] for n, c in curves.items()}, "max_abs_gap": max(gap),
               "mean_abs_gap_last_50": sum(gap[-50:]) / len(gap[-50:]), "losses": curves}
    (args.out / "losses.json").write_text(json.dumps(summary, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for name, curve in curves.items():
        top.plot(curve, label=name, linewidth=1)
    top.set_ylabel("training loss (associative recall)")
    top.legend()
    top.set_title(f"two GDN layers, same seed, {torch.cuda.get_device_name()}")
    bottom.plot(gap, color="gray", linewidth=1)
    bottom.set_ylabel("|gdnc − FLA|")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.out / "loss.png", dpi=120)
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
