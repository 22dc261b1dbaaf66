"""Where the scan's fwd+bwd GPU time goes: torch.profiler's CUDA kernel table over 20 calls per shape.

    python benchmarks/scan_profile.py        # needs a CUDA GPU; D = 1536 and 4096 at B=64, L=203, N=16

benchmarks/scan.py times one call at a time between CUDA events, so its ms include the gaps in which
the GPU waits for the host to launch the next kernel; the sum of this table's kernel times does not.
"""

import importlib.util
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

spec = importlib.util.spec_from_file_location("scan_bench", Path(__file__).with_name("scan.py"))
scan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scan)

if not torch.cuda.is_available():
    print("error: benchmarks/scan_profile.py profiles CUDA kernels and needs a CUDA GPU", file=sys.stderr)
    raise SystemExit(2)
for D in (1536, 4096):
    with scan.scan_mode("on"):
        fwd, fwd_bwd = scan.scan_fwd_bwd((64, D, 203, 16))
        for _ in range(5):
            fwd_bwd()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                fwd_bwd()
            torch.cuda.synchronize()
    print(f"=== D={D}: 20 x fwd_bwd")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=70))
