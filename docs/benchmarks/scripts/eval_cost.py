"""Scoring 8 x 256 tokens (vocab 8192, d_model 256) under no_grad: the blocked loss against full logits + F.cross_entropy."""

import statistics, time, torch, torch.nn.functional as F
from wavefield import WaveFieldConfig, WaveFieldLM

torch.set_num_threads(1)
torch.manual_seed(0)
model = WaveFieldLM(WaveFieldConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4)).eval()
ids = torch.randint(0, 8192, (8, 257))
x, y = ids[:, :-1], ids[:, 1:]


def blocked():
    return model(x, targets=y)


def full():
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


times = {"blocked": [], "full": []}
with torch.no_grad():
    assert abs(blocked().item() - full().item()) < 1e-4
    for _ in range(2):
        blocked()
        full()
    for _ in range(15):
        for name, f in (("blocked", blocked), ("full", full)):
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
for name, ts in times.items():
    print(f"{name}: median {statistics.median(ts) * 1000:.0f} ms, min {min(ts) * 1000:.0f} ms")
print(f"full / blocked (medians): {statistics.median(times['full']) / statistics.median(times['blocked']):.2f}")
