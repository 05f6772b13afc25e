"""The budget ladder's table: each model's validation and test perplexity per seed, and the mean
and spread (min-max) over seeds of its ratio to the transformer of the same seed.

    python docs/benchmarks/scripts/ladder_table.py runs/ladder/tiny-0.5M-s0 runs/ladder/tiny-0.5M-s1 ...
    python docs/benchmarks/scripts/ladder_table.py --candidate "W O W=runs/wow-s0,runs/wow-s1" runs/ladder/tiny-0.5M-s0 runs/ladder/tiny-0.5M-s1

Each folder is a `wavefield bench quality --out` folder (quality.json) holding a transformer.
--candidate NAME=DIR,DIR,... adds the wave model of each DIR (a run with the same budget and
seed, e.g. with --wave-layer-types; or the first model of a DIR without one, such as a run of
--models wave-frozen) to the folder in the same place, as the model NAME.
"""

import argparse
import json
import statistics
from pathlib import Path


def records(folder) -> tuple[int, dict]:
    data = json.loads((Path(folder) / "quality.json").read_text())
    return data["budget"]["seed"], {r["model"]: r for r in data["records"]}


parser = argparse.ArgumentParser()
parser.add_argument("folders", nargs="+")
parser.add_argument("--candidate", action="append", default=[], help="NAME=DIR,DIR,... one DIR per folder")
args = parser.parse_args()
runs = [records(f) for f in args.folders]
for spec in args.candidate:
    name, dirs = spec.split("=", 1)
    dirs = dirs.split(",")
    assert len(dirs) == len(runs), f"--candidate {name}: {len(dirs)} folders for {len(runs)} seeds"
    for (seed, models), d in zip(runs, dirs):
        their_seed, theirs = records(d)
        assert their_seed == seed, f"{d} has seed {their_seed}, not {seed}"
        models[name] = theirs["wave"] if "wave" in theirs else next(iter(theirs.values()))  # e.g. a run of wave-frozen alone

rows = {}  # model -> list of (seed, lr, val ppl, test ppl, val / transformer, test / transformer)
for seed, models in runs:
    ref = models["transformer"]
    for name, r in models.items():
        rows.setdefault(name, []).append(
            (seed, r["best_lr"], r["val"]["ppl"], r["test"]["ppl"], r["val"]["ppl"] / ref["val"]["ppl"], r["test"]["ppl"] / ref["test"]["ppl"])
        )
print("| model | seeds | best lr per seed | val ppl per seed | val / transformer: mean (min - max) | test / transformer: mean (min - max) |")
print("|---|---|---|---|---|---|")
for name, rs in rows.items():
    val, test = [r[4] for r in rs], [r[5] for r in rs]
    print(
        f"| {name} | {', '.join(str(r[0]) for r in rs)} | {', '.join(f'{r[1]:g}' for r in rs)} | {', '.join(f'{r[2]:.2f}' for r in rs)} | "
        f"{statistics.mean(val):.3f} ({min(val):.3f} - {max(val):.3f}) | {statistics.mean(test):.3f} ({min(test):.3f} - {max(test):.3f}) |"
    )
