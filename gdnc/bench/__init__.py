"""The forward benchmark of issue 4: gdnc beside FlashQLA, FLA's Triton kernels and FlashInfer.

    python benchmarks/bench_forward.py --quick      # or: gdnc bench --quick

Modules, one job each: shapes (the shape table and its inputs), peers (the providers), timing
(CUDA-graph timing and the GPU's ceilings), roofline (FLOPs, bytes, floor), warm (compiling every
provider's kernels in parallel processes before timing), cold (time to a first result with empty
caches), processes (their child processes), report (JSON, Markdown, plot), run (the command
line). The package itself imports nothing; report needs no torch, so a results folder renders
(and is tested) without a GPU.
"""
