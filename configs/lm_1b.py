"""A 1.0B-parameter GPT, sharded FSDP-style over every device (params, gradients and Adam
state split over the "fsdp" mesh axis), with rematerialised blocks, rotary positions,
RMSNorm and bfloat16 compute; for a TPU pod slice or a multi-GPU host.

  python run.py --config=configs/lm_1b.py --config.data.path=CORPUS
Run the same command on every host of a pod slice (jax.distributed starts by itself).
Width 2048, 20 blocks of 16 heads, a context of 2,048 bytes, global batch 256 sequences.
Not yet measured by bigjax: no accelerators were lent to the sessions so far.
"""

from __future__ import annotations

import ml_collections

from configs import lm_tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'Unknown variant "{arg}": configs/lm_1b.py takes none.')
  config = lm_tiny.get_config()
  with config.unlocked():
    config.model.update(context_length=2048, hidden_size=2048, depth=20, num_heads=16,
                        positions="rope", norm="rms", remat=True)
    config.data.seq_len = 2048
    config.precision.compute_dtype = "bfloat16"
    config.parallel.mesh = dict(data=1, fsdp=-1)
    config.parallel.fsdp_min_size = 2 ** 16
    config.optimizer.update(learning_rate=3e-4, weight_decay=0.1, clip_norm=1.0)
    config.optimizer.schedule.warmup_steps = 2000
    config.train.update(batch_size=256, num_steps=50_000, log_every_steps=50)
    config.eval.batch_size = 256
    config.checkpoint.every_steps = 1000
  config.lock()
  return config
