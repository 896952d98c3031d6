"""ResNet-20/32/56 on CIFAR-10 through TFDS (needs network once, and `pip install -e '.[tf]'`
to build the dataset; offline it fails at once, saying what to do).

Same recipe as configs/fashion_mnist_resnet.py (SGD + Nesterov 0.1, cosine after 2 warmup
epochs, L2 5e-4, batch 128, 30 epochs, standardised inputs), 10% of train held out.
  python run.py --config=configs/cifar10_resnet.py[:resnet32|resnet56][,small]
Augmentation as He et al. (2016): 4-pixel padding with random 32x32 crops and random
left-right flips, on the device in the train step.
Expected: not yet measured by bigjax (this machine has no network for CIFAR-10 and no GPU).
For reference, He et al. (2016) report 91.25% test accuracy for ResNet-20 after 164 epochs
with this augmentation; 30 epochs will give less.
"""

from __future__ import annotations

import ml_collections

from configs import fashion_mnist_resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = fashion_mnist_resnet.get_config(arg)
  with config.unlocked():
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.path = ""
    config.data.validation_fraction = 0.1
    config.data.augment.crop_padding = 4
    config.data.augment.flip_lr = True
    if config.optimizer.schedule.warmup_steps:
      config.optimizer.schedule.warmup_steps = 2 * (45_000 // config.train.batch_size)
  config.lock()
  return config
