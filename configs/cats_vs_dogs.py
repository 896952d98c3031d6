"""The lessons' 3-channel image classifier: conv3x3(16)-pool-conv3x3(32)-pool-dense(64)-
dense(2) on 224x224 RGB photos of cats and dogs.

  python run.py --config=configs/cats_vs_dogs.py             # TFDS cats_vs_dogs (download)
  python run.py --config=configs/cats_vs_dogs.py:folder --config.data.path=PHOTOS
      # your own photos: PHOTOS/cat/*.jpg, PHOTOS/dog/*.jpg (any class names, any sizes)
Add ',small' for a smoke test (200 training images, 1 epoch).

TFDS cats_vs_dogs has one split of 23,262 photos of many sizes: the first 80% trains (10% of
that held out for validation), the last 20% is the test split; every image is resized to
224x224 as it is read. Splits stay on the host (placement="host": 23k images are 3.5 GB as
uint8, 14 GB as float32) and batches are prefetched to the device; training flips images
left-right at random. Not yet measured by bigjax: this machine has no network for the
dataset and no GPU.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  unknown = set(tokens) - {"folder", "small"}
  if unknown:
    raise ValueError(f"Unknown config variant(s) {sorted(unknown)}: use folder and/or small.")
  config = base.base_config("cnn", small=False)
  config.model.update(conv_features=(16, 32), dense_sizes=(64,), num_classes=2)
  config.data.update(
      name="cats_vs_dogs", train_split="train[:80%]", test_split="train[80%:]",
      validation_fraction=0.1, image_size=(224, 224), channels=3, placement="host")
  if "folder" in tokens:
    config.data.update(source="folder", name="image_folder", download=False)
  config.data.augment.flip_lr = True
  config.train.update(batch_size=32, num_epochs=5, log_every_steps=50)
  config.eval.batch_size = 128
  if "small" in tokens:
    config.data.update(max_train_examples=200, max_test_examples=100)
    config.train.update(num_epochs=1, log_every_steps=5)
  config.lock()
  return config
