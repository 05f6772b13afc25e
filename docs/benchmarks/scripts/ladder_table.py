"""The budget ladder's table: each model's validation and test perplexity per seed, and the mean
and spread (min-max) over seeds of its ratio to the transformer of the same seed.

    python docs/benchmarks/scripts/ladder_table.py runs/ladder/tiny-0.5M-s0 runs/ladder/tiny-0.5M-s1 ...

Each folder is a `wavefield bench quality --out` folder (quality.json) holding a transformer.
"""

import json
import statistics
import sys
from pathlib import Path

rows = {}  # model -> list of (seed, lr, val ppl, test ppl, val / transformer, test / transformer)
for folder in sys.argv[1:]:
    data = json.loads((Path(folder) / "quality.json").read_text())
    records = {r["model"]: r for r in data["records"]}
    ref = records["transformer"]
    for name, r in records.items():
        rows.setdefault(name, []).append(
            (
                data["budget"]["seed"],
                r["best_lr"],
                r["val"]["ppl"],
                r["test"]["ppl"],
                r["val"]["ppl"] / ref["val"]["ppl"],
                r["test"]["ppl"] / ref["test"]["ppl"],
            )
        )
print("| model | seeds | best lr per seed | val ppl per seed | val / transformer: mean (min - max) | test / transformer: mean (min - max) |")
print("|---|---|---|---|---|---|")
for name, runs in rows.items():
    val, test = [r[4] for r in runs], [r[5] for r in runs]
    print(
        f"| {name} | {', '.join(str(r[0]) for r in runs)} | {', '.join(f'{r[1]:g}' for r in runs)} | {', '.join(f'{r[2]:.2f}' for r in runs)} | "
        f"{statistics.mean(val):.3f} ({min(val):.3f} - {max(val):.3f}) | {statistics.mean(test):.3f} ({min(test):.3f} - {max(test):.3f}) |"
    )
