"""A small GPT (11.1M parameters) for one GPU or TPU host: width 384, 6 blocks of 6
heads, a context of 1,024 bytes, bfloat16 compute, AdamW with cosine decay.

  python run.py --config=configs/lm_small.py --config.data.path=CORPUS
Defaults to Debian's fortunes (apt-get install fortunes), which is small for this model;
point it at a larger corpus. Reports tokens/s and MFU (model FLOPs over the device's bf16
peak) at the end. Not yet measured by bigjax: no GPU was lent to the sessions so far.
"""

from __future__ import annotations

import ml_collections

from configs import lm_tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'Unknown variant "{arg}": configs/lm_small.py takes none.')
  config = lm_tiny.get_config()
  with config.unlocked():
    config.model.update(context_length=1024, hidden_size=384, depth=6, num_heads=6)
    config.data.seq_len = 1024
    config.precision.compute_dtype = "bfloat16"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule.warmup_steps = 500
    config.train.update(batch_size=32, num_steps=5000, log_every_steps=100)
    config.checkpoint.every_steps = 1000
  config.lock()
  return config
