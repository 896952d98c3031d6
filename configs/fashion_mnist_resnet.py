"""ResNet-20 (He et al., 2016, CIFAR-style with option-A shortcuts) on Fashion-MNIST: SGD with momentum 0.9 and Nesterov, learning rate 0.1 with
a cosine decay after 2 warmup epochs, L2 5e-4 (PyTorch's weight_decay) on conv and dense
kernels, batch 128, 30 epochs, per-channel standardised inputs.

Training images are augmented on the device: random crops after 4-pixel padding and random
left-right flips (--config.data.augment.crop_padding=0 --config.data.augment.flip_lr=False
turn them off).

Run (offline with Debian's dataset-fashion-mnist, else TFDS):
  python run.py --config=configs/fashion_mnist_resnet.py
  python run.py --config=configs/fashion_mnist_resnet.py:resnet32    # or resnet56
Expected: ResNet-20 reached 0.9447 test accuracy (validation 0.9467) in 30 epochs, 101
minutes on a 2-core CPU (bench/results/resnet20_fashion_mnist_aug_cpu2.jsonl, run with
these settings given as overrides); the public Fashion-MNIST benchmark lists ResNet18 at
0.949.
"""

from __future__ import annotations

import ml_collections

from configs import fashion_mnist

DEPTHS = ("resnet20", "resnet32", "resnet56")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t for t in (arg or "").split(",") if t]
  small = "small" in tokens
  names = [t for t in tokens if t != "small"] or ["resnet20"]
  if len(names) > 1 or names[0] not in DEPTHS:
    raise ValueError(f"Unknown variant {names}: choose one of {DEPTHS}, optionally ',small'.")
  config = fashion_mnist.get_config("mlp,small" if small else "mlp")
  with config.unlocked():
    config.model = dict(name=names[0], num_classes=10, shortcut="padding", stem="cifar",
                        activation="relu", kernel_init="he_normal", bias_init="zeros",
                        norm_momentum=0.9)
    config.data.standardize = True
    config.data.augment.crop_padding = 4
    config.data.augment.flip_lr = True
    config.loss.l2 = 2.5e-4  # gradient 2 * l2 * w = 5e-4 * w, PyTorch's weight_decay=5e-4
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.schedule.name = "cosine"
    config.train.batch_size = 128
    config.train.num_epochs = 30 if not small else 1
    config.train.steps_per_call = 1  # convolutions run slower inside a scan on XLA:CPU
    # Faster than batches of 1000 on CPUs: the convolutions' columns fit in cache.
    config.eval.batch_size = 64
    config.train.log_every_steps = 100 if not small else 5
    config.optimizer.schedule.warmup_steps = 2 * (48_000 // 128) if not small else 0
  config.lock()
  return config
