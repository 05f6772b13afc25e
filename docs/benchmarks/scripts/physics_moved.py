"""How far training moved each wave head's omega, alpha and phi from their initial values.

    python docs/benchmarks/scripts/physics_moved.py RUN_OR_MODEL_FOLDER [...]

For every wave layer and head: the reach 1/alpha and the frequency omega at initialisation
and after training, and phi (which starts at 0); the rows of wavefield.diagnostics.head_table,
which `wavefield diagnose` and `wavefield info` show too.
"""

import sys

from wavefield.checkpoint import load_checkpoint
from wavefield.diagnostics import head_physics, head_table

for folder in sys.argv[1:]:
    model = load_checkpoint(folder)[0]
    print(f"# {folder}")
    print("layer head deposit (c: channel, o: outer) | reach init -> trained (x) | omega init -> trained | phi")
    for r in head_table(head_physics(model)):
        deposit = model.blocks[r["layer"]].mixer.deposit[0]
        print(
            f"{r['layer']} {r['head']} {deposit} | {r['reach_init']:8.2f} -> {r['reach_1e']:8.2f} ({r['reach_moved']:5.2f}x)"
            f" | {r['omega_init']:.4f} -> {r['omega']:.4f} | {r['phi']:+.4f}"
        )
