"""Where the wave model's prefill spends its time: torch's profiler over one 8,192-token
prefill of the small preset's wave model (vocabulary 8192, pieces of 256 tokens), one thread.

    python docs/benchmarks/scripts/profile_prefill.py
"""

import torch
from torch.profiler import ProfilerActivity, profile

from wavefield.bench.inference import InferenceSettings, build_models

torch.set_num_threads(1)
model = build_models(InferenceSettings(models=("wave",)), "cpu")["wave"]
ids = torch.randint(0, 8192, (1, 8192))
model.prefill(ids[:, :1024])  # warm-up
with profile(activities=[ProfilerActivity.CPU]) as prof:
    model.prefill(ids)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
