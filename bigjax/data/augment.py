"""Training-time augmentation on the device, inside the jitted train step.

`make_augmenter(config.data.augment, num_classes)` gives a pure
`augment(batch, key) -> batch` or None when every option is off. It runs after the batch
is gathered and before the forward pass, keyed by the step's RNG: the same (seed, step)
gives the same augmented batch, a resumed run sees what an uninterrupted one would, and
the host does no work. Evaluation never calls it.

Order: affine (rotation, scale, translation) -> crop with padding -> flips -> cutout ->
mixup. Pixels that an affine transform or a crop bring in from outside the image are 0
(black for [0, 1] scaling; the mean colour for standardised inputs).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from bigjax.registry import ConfigError

DEFAULTS = dict(crop_padding=0, flip_lr=False, flip_ud=False, rotate_degrees=0.0, scale=0.0,
                translate=0.0, cutout_size=0, mixup_alpha=0.0,
                # Masked-LM (token inputs): this fraction of regular tokens is chosen; of
                # those 80% become mlm_mask_id, 10% a random regular token, 10% stay.
                mlm_probability=0.0, mlm_mask_id=3, mlm_first_regular_id=4)
IMAGE_OPTIONS = ("crop_padding", "flip_lr", "flip_ud", "rotate_degrees", "scale", "translate",
                 "cutout_size", "mixup_alpha")
IGNORE = -1  # the label of a position the masked-LM loss skips


def mask_tokens(tokens: jax.Array, key: jax.Array, probability: float, mask_id: int,
                first_regular_id: int, vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """BERT's masking (Devlin et al. 2019): (inputs, labels). Each regular token (id >=
  first_regular_id: never padding or [CLS]/[SEP]) is chosen with `probability`; a chosen one
  becomes mask_id (80%), a random regular token (10%) or itself (10%), and its label is the
  original token; every other label is IGNORE."""
  u = jax.random.uniform(key, (3 * tokens.size,)).reshape(3, *tokens.shape)  # one flat draw
  chosen = (u[0] < probability) & (tokens >= first_regular_id)
  random_ids = first_regular_id + _below(u[2], vocab_size - first_regular_id)
  inputs = jnp.where(chosen & (u[1] < 0.8), mask_id,
                     jnp.where(chosen & (u[1] >= 0.9), random_ids, tokens))
  return inputs.astype(tokens.dtype), jnp.where(chosen, tokens, IGNORE).astype(jnp.int32)


def flip_lr(image: jax.Array) -> jax.Array:
  return image[:, ::-1]


def flip_ud(image: jax.Array) -> jax.Array:
  return image[::-1]


def affine(image: jax.Array, degrees: jax.Array, zoom: jax.Array, shift_y: jax.Array,
           shift_x: jax.Array) -> jax.Array:
  """[H, W, C] rotated counter-clockwise by `degrees` about its centre, zoomed by `zoom`
  (>1 enlarges) and shifted by (shift_y, shift_x) pixels; bilinear, zeros outside."""
  h, w = image.shape[:2]
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  theta = jnp.deg2rad(degrees)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  # Inverse map: each output pixel samples the input where the transform would send it from.
  y, x = (yy - cy - shift_y) / zoom, (xx - cx - shift_x) / zoom
  src_y = cos * y + sin * x + cy
  src_x = -sin * y + cos * x + cx
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [src_y, src_x], order=1, mode="constant", cval=0.0)
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def crop_with_padding(image: jax.Array, padding: int, offset_y: jax.Array,
                      offset_x: jax.Array) -> jax.Array:
  """Pads [H, W, C] by `padding` zeros on each side and crops H x W at the offset
  (0..2 * padding each; `padding` is the unshifted crop)."""
  h, w, c = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  return jax.lax.dynamic_slice(padded, (offset_y, offset_x, 0), (h, w, c))


def cutout(image: jax.Array, size: int, center_y: jax.Array, center_x: jax.Array) -> jax.Array:
  """Zeroes the size x size square centred at (center_y, center_x), clipped to the image."""
  h, w = image.shape[:2]
  ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  top, left = center_y - size // 2, center_x - size // 2
  inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
  return jnp.where(inside[..., None], 0.0, image).astype(image.dtype)


def mixup(images: jax.Array, soft_labels: jax.Array, weight: jax.Array,
          partner: jax.Array) -> tuple[jax.Array, jax.Array]:
  """weight * x + (1 - weight) * x[partner], and the same for the (soft) labels."""
  mixed = weight * images + (1.0 - weight) * images[partner]
  return mixed.astype(images.dtype), weight * soft_labels + (1.0 - weight) * soft_labels[partner]


def check(options: Mapping[str, Any]) -> dict:
  """The options with defaults filled in; unknown names and bad values are errors."""
  unknown = sorted(set(options) - set(DEFAULTS))
  if unknown:
    raise ConfigError(f"Unknown config.data.augment option(s) {unknown}; known: "
                      f"{sorted(DEFAULTS)}.")
  opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
  for name in ("crop_padding", "cutout_size"):
    if int(opts[name]) < 0:
      raise ConfigError(f"config.data.augment.{name} must be >= 0; got {opts[name]}.")
  if not 0.0 <= float(opts["mlm_probability"]) < 1.0:
    raise ConfigError("config.data.augment.mlm_probability must be in [0, 1) (BERT: 0.15); "
                      f"got {opts['mlm_probability']}.")
  for name in ("rotate_degrees", "translate", "mixup_alpha"):
    if float(opts[name]) < 0:
      raise ConfigError(f"config.data.augment.{name} must be >= 0; got {opts[name]}.")
  if not 0.0 <= float(opts["scale"]) < 1.0:
    raise ConfigError(f"config.data.augment.scale must be in [0, 1) (zoom in [1 - s, 1 + s]); "
                      f"got {opts['scale']}.")
  return opts


def is_active(options: Mapping[str, Any] | None) -> bool:
  if not options:
    return False
  opts = check(options)  # (mlm_mask_id and mlm_first_regular_id alone turn nothing on)
  return any(bool(opts[k]) for k in (*IMAGE_OPTIONS, "mlm_probability"))


# What each image's transforms draw, one uniform [0, 1) number each.
DRAWS = ("angle", "zoom", "shift_y", "shift_x", "crop_y", "crop_x", "flip_lr", "flip_ud",
         "cut_y", "cut_x")


def per_image_draws(key: jax.Array, num_images: int) -> dict[str, jax.Array]:
  """{name: [num_images] uniform [0, 1)} for every name in DRAWS, from one random draw.
  Cheap to compile: one threefry call, not one per transform and image (each compiles to
  its own large kernel on CPUs), drawn flat because XLA:CPU compiles a multi-dimensional
  draw several times slower than the same bits drawn as one vector (bench.kernel_census)."""
  u = jax.random.uniform(key, (num_images * len(DRAWS),)).reshape(num_images, len(DRAWS))
  return {name: u[:, i] for i, name in enumerate(DRAWS)}


def _below(u: jax.Array, n: int) -> jax.Array:
  """A uniform integer in [0, n) from u uniform in [0, 1) (float32: bias under 2^-23 n)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _symmetric(u: jax.Array) -> jax.Array:
  """Uniform in [-1, 1) from u uniform in [0, 1)."""
  return 2.0 * u - 1.0


def make_augmenter(options: Mapping[str, Any] | None, num_classes: int | None,
                   vocab_size: int | None = None,
                   tokens: bool = False) -> Callable[[dict, jax.Array], dict] | None:
  """A pure `augment(batch, key) -> batch` for `config.data.augment`, or None if all off.
  `num_classes` is needed for mixup (labels become soft [B, C]); `vocab_size` for masked-LM
  (its random tokens), which `tokens` data alone takes."""
  if not is_active(options):
    return None
  opts = check(options)
  image_options = [k for k in IMAGE_OPTIONS if opts[k]]
  if tokens and image_options:
    raise ConfigError(f"config.data.augment.{image_options[0]} is for images; this data is "
                      "token sequences (mlm_probability is their augmentation).")
  if opts["mlm_probability"]:
    if not tokens or not vocab_size:
      raise ConfigError("config.data.augment.mlm_probability needs token inputs and a model "
                        "with config.model.vocab_size (e.g. a BERT with head='mlm').")
    probability, mask_id = float(opts["mlm_probability"]), int(opts["mlm_mask_id"])
    first = int(opts["mlm_first_regular_id"])

    def mask(batch: dict, key: jax.Array) -> dict:
      inputs, labels = mask_tokens(batch["image"], key, probability, mask_id, first,
                                   int(vocab_size))
      return dict(batch, image=inputs, label=labels)

    return mask
  if opts["mixup_alpha"] and not num_classes:
    raise ConfigError("config.data.augment.mixup_alpha needs class labels; this run has "
                      "regression targets or no class outputs. Set it to 0.")
  pad, cut = int(opts["crop_padding"]), int(opts["cutout_size"])
  degrees, zoom, shift = (float(opts["rotate_degrees"]), float(opts["scale"]),
                          float(opts["translate"]))

  def one(image, draw):
    if degrees or zoom or shift:
      h, w = image.shape[:2]
      angle = degrees * _symmetric(draw["angle"])
      factor = 1.0 + zoom * _symmetric(draw["zoom"])
      dy, dx = (shift * n * _symmetric(draw[f]) for n, f in ((h, "shift_y"), (w, "shift_x")))
      image = affine(image, angle, factor, dy, dx).astype(image.dtype)
    if pad:
      offsets = (_below(draw[f], 2 * pad + 1) for f in ("crop_y", "crop_x"))
      image = crop_with_padding(image, pad, *offsets)
    if opts["flip_lr"]:
      image = jnp.where(draw["flip_lr"] < 0.5, flip_lr(image), image)
    if opts["flip_ud"]:
      image = jnp.where(draw["flip_ud"] < 0.5, flip_ud(image), image)
    if cut:
      cy, cx = (_below(draw[f], n) for f, n in zip(("cut_y", "cut_x"), image.shape[:2]))
      image = cutout(image, cut, cy, cx)
    return image

  def augment(batch: dict, key: jax.Array) -> dict:
    # Split only for mixup: each threefry call is more for XLA to compile.
    k_images, k_mix = jax.random.split(key) if opts["mixup_alpha"] else (key, None)
    images = batch["image"]
    images = jax.vmap(one)(images, per_image_draws(k_images, images.shape[0]))
    out = dict(batch, image=images)
    if opts["mixup_alpha"]:
      k_weight, k_partner = jax.random.split(k_mix)
      alpha = float(opts["mixup_alpha"])
      weight = jax.random.beta(k_weight, alpha, alpha)
      labels = batch["label"]
      soft = (labels.astype(jnp.float32) if labels.ndim == 2
              else jax.nn.one_hot(labels, num_classes, dtype=jnp.float32))
      partner = jax.random.permutation(k_partner, images.shape[0])
      out["image"], out["label"] = mixup(images, soft, weight, partner)
    return out

  return augment


def describe(options: Mapping[str, Any] | None) -> str:
  """'crop_padding=4 flip_lr=True' for the options that are on, or 'none'."""
  if not is_active(options):
    return "none"
  return " ".join(f"{k}={v}" for k, v in check(options).items() if v)


