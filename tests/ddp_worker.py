"""Launched by test_distributed.py under torchrun: train a few steps, then save this rank's weights."""

import os
import sys

from safetensors.torch import save_file

from wavefield.train import TrainArgs, train

out, data, cache, dump = sys.argv[1:5]
model = train(
    TrainArgs(
        out=out,
        data=data,
        tokenizer="bytes",
        cache_dir=cache,
        seq_len=32,
        batch_size=4,
        max_steps=6,
        eval_interval=3,
        log_interval=1,
        model=dict(d_model=16, n_layers=2, n_heads=2),
    )
)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(dump, f"rank{os.environ['RANK']}.safetensors"))
