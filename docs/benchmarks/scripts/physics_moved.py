"""How far training moved each wave head's omega, alpha and phi from their initial values.

    python docs/benchmarks/scripts/physics_moved.py RUN_OR_MODEL_FOLDER [...]

For every wave layer and head: the reach 1/alpha and the frequency omega at initialisation
(the layer's own initial_scales) and after training, and phi (which starts at 0).
"""

import sys

import torch

from wavefield.checkpoint import load_checkpoint
from wavefield.layers import WaveFieldAttention

for folder in sys.argv[1:]:
    model = load_checkpoint(folder)[0]
    print(f"# {folder}")
    print("layer head deposit (c: channel, o: outer) | reach init -> trained (x) | omega init -> trained | phi")
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        if not isinstance(mixer, WaveFieldAttention):
            continue
        omega0, alpha0 = mixer.initial_scales()
        with torch.no_grad():
            omega, alpha, phi = mixer.omega.double(), mixer.alpha.double(), mixer.phi.double()
        for h in range(mixer.n_heads):
            r0, r = 1 / alpha0[h].item(), 1 / alpha[h].item()
            print(
                f"{i} {h} {mixer.deposit[0]} | {r0:8.2f} -> {r:8.2f} ({r / r0:5.2f}x) | {omega0[h].item():.4f} -> {omega[h].item():.4f} | {phi[h].item():+.4f}"
            )
