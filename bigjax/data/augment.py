"""Training-time augmentation on the device, inside the jitted train step.

`make_augmenter(config.data.augment, num_classes)` gives a pure
`augment(batch, key) -> batch` or None when every option is off. It runs after the batch
is gathered and before the forward pass, keyed by the step's RNG: the same (seed, step)
gives the same augmented batch, a resumed run sees what an uninterrupted one would, and
the host does no work. Evaluation never calls it.

Order: random resized crop -> affine (rotation, scale, translation) -> crop with padding ->
flips -> colour jitter (brightness, contrast, saturation) -> grayscale -> Gaussian blur ->
cutout -> mixup. Pixels that an affine transform or a crop bring in from outside the image
are 0 (black for [0, 1] scaling; the mean colour for standardised inputs). Colour transforms
act on the model-ready values and do not clip.

`views=2` (contrastive pre-training) augments every image twice, with independent draws,
and stacks the views: a batch of B images becomes 2B, rows i and i + B being two views of
one image; `batch["partner"]` gives each row the index of its other view, and labels and
weights are repeated.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from bigjax.registry import ConfigError

DEFAULTS = dict(crop_padding=0, flip_lr=False, flip_ud=False, rotate_degrees=0.0, scale=0.0,
                translate=0.0, cutout_size=0, mixup_alpha=0.0,
                # Masked-LM (token inputs): this fraction of regular tokens is chosen; of
                # those 80% become mlm_mask_id, 10% a random regular token, 10% stay.
                mlm_probability=0.0, mlm_mask_id=3, mlm_first_regular_id=4,
                # Self-supervised pre-training (SimCLR's set): a crop of a random area
                # fraction in [resized_crop, 1] and aspect ratio in [3/4, 4/3], resized back
                # to the image's size; brightness, contrast and saturation factors drawn in
                # [1 - s, 1 + s], the three applied together with jitter_probability; RGB
                # made gray with grayscale_probability; a Gaussian blur of sigma in
                # [0.1, blur_sigma] with blur_probability; `views` augmented copies per image.
                resized_crop=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                jitter_probability=0.8, grayscale_probability=0.0, blur_sigma=0.0,
                blur_probability=0.5, views=1)
IMAGE_OPTIONS = ("crop_padding", "flip_lr", "flip_ud", "rotate_degrees", "scale", "translate",
                 "cutout_size", "mixup_alpha", "resized_crop", "brightness", "contrast",
                 "saturation", "grayscale_probability", "blur_sigma")
# The options that draw from the second stream (SECOND_DRAWS); off, the first stream's draws
# stay as they were before these options existed.
SECOND_STREAM_OPTIONS = ("resized_crop", "brightness", "contrast", "saturation",
                         "grayscale_probability", "blur_sigma")
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


def resized_crop(image: jax.Array, top: jax.Array, left: jax.Array, height: jax.Array,
                 width: jax.Array) -> jax.Array:
  """The box (top, left, height, width) of [H, W, C], in pixels (fractional allowed), resized
  to H x W with bilinear sampling (edges repeated outside the image)."""
  h, w = image.shape[:2]
  ys = top + (jnp.arange(h, dtype=jnp.float32) + 0.5) * height / h - 0.5
  xs = left + (jnp.arange(w, dtype=jnp.float32) + 0.5) * width / w - 0.5
  yy, xx = jnp.meshgrid(ys, xs, indexing="ij")
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [yy, xx], order=1, mode="nearest")
  return jax.vmap(sample, in_axes=2, out_axes=2)(image).astype(image.dtype)


def random_box(h: int, w: int, min_area: float, u_area, u_ratio, u_y, u_x):
  """(top, left, height, width) of a box of area fraction in [min_area, 1] and aspect ratio
  (width / height) log-uniform in [3/4, 4/3], placed uniformly; sides clipped to the image
  (torchvision re-draws instead, up to 10 times, then falls back to a centre crop)."""
  area = (min_area + (1.0 - min_area) * u_area) * h * w
  ratio = jnp.exp(jnp.log(3 / 4) + (jnp.log(4 / 3) - jnp.log(3 / 4)) * u_ratio)
  height = jnp.clip(jnp.sqrt(area / ratio), 1.0, h)
  width = jnp.clip(jnp.sqrt(area * ratio), 1.0, w)
  return u_y * (h - height), u_x * (w - width), height, width


GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision and PIL


def gray(image: jax.Array) -> jax.Array:
  """[H, W, 1] luma of an RGB [H, W, 3] image (a one-channel image is its own)."""
  if image.shape[-1] != 3:
    return image
  return (image * jnp.asarray(GRAY_WEIGHTS, image.dtype)).sum(-1, keepdims=True)


def colour_jitter(image: jax.Array, brightness: jax.Array, contrast: jax.Array,
                  saturation: jax.Array) -> jax.Array:
  """Scales the values by `brightness`, their spread about the image's mean by `contrast`,
  and (RGB) the colours' distance from gray by `saturation` (1 = unchanged, each)."""
  image = image * brightness
  mean = image.mean()
  image = (image - mean) * contrast + mean
  if image.shape[-1] == 3:
    luma = gray(image)
    image = luma + (image - luma) * saturation
  return image


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """[H, W, C] blurred by a separable Gaussian of `sigma` (pixels), truncated at `radius`,
  edges reflected."""
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  weights = weights / weights.sum()
  padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
  h, w = image.shape[:2]
  rows = sum(weights[k] * padded[k:k + h] for k in range(2 * radius + 1))
  return sum(weights[k] * rows[:, k:k + w] for k in range(2 * radius + 1)).astype(image.dtype)


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
  for name in ("jitter_probability", "grayscale_probability", "blur_probability"):
    if not 0.0 <= float(opts[name]) <= 1.0:
      raise ConfigError(f"config.data.augment.{name} must be in [0, 1]; got {opts[name]}.")
  if not 0.0 <= float(opts["resized_crop"]) < 1.0:
    raise ConfigError("config.data.augment.resized_crop is the smallest area fraction kept, "
                      f"in [0, 1) (SimCLR: 0.08; 0 = off); got {opts['resized_crop']}.")
  for name in ("brightness", "contrast", "saturation"):
    if not 0.0 <= float(opts[name]) < 1.0:
      raise ConfigError(f"config.data.augment.{name} must be in [0, 1) (factors in "
                        f"[1 - s, 1 + s]; SimCLR: 0.8); got {opts[name]}.")
  if int(opts["views"]) not in (1, 2):
    raise ConfigError(f"config.data.augment.views must be 1 or 2 (two views per image for "
                      f"contrastive losses); got {opts['views']}.")
  if int(opts["views"]) == 2 and float(opts["mixup_alpha"]):
    raise ConfigError("config.data.augment.views=2 and mixup_alpha together mix views of "
                      "different images; set mixup_alpha=0 for contrastive pre-training.")
  for name in ("rotate_degrees", "translate", "mixup_alpha", "blur_sigma"):
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
  return any(bool(opts[k]) for k in (*IMAGE_OPTIONS, "mlm_probability")) or opts["views"] > 1


# What each image's transforms draw, one uniform [0, 1) number each.
DRAWS = ("angle", "zoom", "shift_y", "shift_x", "crop_y", "crop_x", "flip_lr", "flip_ud",
         "cut_y", "cut_x")


def per_image_draws(key: jax.Array, num_images: int,
                    names: tuple[str, ...] = DRAWS) -> dict[str, jax.Array]:
  """{name: [num_images] uniform [0, 1)} for every name in `names`, from one random draw.
  Cheap to compile: one threefry call, not one per transform and image (each compiles to
  its own large kernel on CPUs), drawn flat because XLA:CPU compiles a multi-dimensional
  draw several times slower than the same bits drawn as one vector (bench.kernel_census)."""
  u = jax.random.uniform(key, (num_images * len(names),)).reshape(num_images, len(names))
  return {name: u[:, i] for i, name in enumerate(names)}


# What the self-supervised transforms draw, from a second stream (SECOND_STREAM_OPTIONS).
SECOND_DRAWS = ("area", "ratio", "box_y", "box_x", "brightness", "contrast", "saturation",
                "jitter", "gray", "blur", "sigma")
SECOND_STREAM = 2


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
  image_options = [k for k in IMAGE_OPTIONS if opts[k]] + (["views"] if opts["views"] > 1
                                                             else [])
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

  min_area = float(opts["resized_crop"])
  jitter = tuple(float(opts[k]) for k in ("brightness", "contrast", "saturation"))
  jitter_p, gray_p = float(opts["jitter_probability"]), float(opts["grayscale_probability"])
  max_sigma, blur_p = float(opts["blur_sigma"]), float(opts["blur_probability"])
  second_stream = any(opts[k] for k in SECOND_STREAM_OPTIONS)

  def one(image, draw):
    if min_area:
      box = random_box(*image.shape[:2], min_area,
                       *(draw[f] for f in ("area", "ratio", "box_y", "box_x")))
      image = resized_crop(image, *box)
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
    if any(jitter):
      factors = (1.0 + s * _symmetric(draw[f])
                 for s, f in zip(jitter, ("brightness", "contrast", "saturation")))
      image = jnp.where(draw["jitter"] < jitter_p, colour_jitter(image, *factors),
                        image).astype(image.dtype)
    if gray_p and image.shape[-1] == 3:
      image = jnp.where(draw["gray"] < gray_p, jnp.broadcast_to(gray(image), image.shape),
                        image)
    if max_sigma:
      radius = max(1, min(int(math.ceil(2 * max_sigma)), (min(image.shape[:2]) - 1) // 2))
      sigma = 0.1 + (max_sigma - 0.1) * draw["sigma"] if max_sigma > 0.1 else max_sigma
      image = jnp.where(draw["blur"] < blur_p, gaussian_blur(image, sigma, radius), image)
    if cut:
      cy, cx = (_below(draw[f], n) for f, n in zip(("cut_y", "cut_x"), image.shape[:2]))
      image = cutout(image, cut, cy, cx)
    return image

  def augmented_images(images, key):
    draws = per_image_draws(key, images.shape[0])
    if second_stream:
      draws.update(per_image_draws(jax.random.fold_in(key, SECOND_STREAM), images.shape[0],
                                   SECOND_DRAWS))
    return jax.vmap(one)(images, draws)

  def augment(batch: dict, key: jax.Array) -> dict:
    if int(opts["views"]) == 2:
      return two_views(batch, key, augmented_images)
    # Split only for mixup: each threefry call is more for XLA to compile.
    k_images, k_mix = jax.random.split(key) if opts["mixup_alpha"] else (key, None)
    images = augmented_images(batch["image"], k_images)
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


def two_views(batch: dict, key: jax.Array, augmented_images) -> dict:
  """Each image augmented twice (view 0 with `key`, view 1 with its fold-in), stacked
  [view 0 of every image; view 1 of every image]; `partner` [2B] is each row's other view,
  and every other per-example array is repeated."""
  images = batch["image"]
  n = images.shape[0]
  views = [augmented_images(images, key),
           augmented_images(images, jax.random.fold_in(key, 1))]
  out = {name: (jnp.concatenate([value, value]) if getattr(value, "shape", ())[:1] == (n,)
                else value) for name, value in batch.items()}
  out["image"] = jnp.concatenate(views)
  out["partner"] = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)]).astype(jnp.int32)
  return out


def describe(options: Mapping[str, Any] | None) -> str:
  """'crop_padding=4 flip_lr=True' for the options that are on, or 'none'."""
  if not is_active(options):
    return "none"
  opts = check(options)
  # Settings of another option are shown only with it.
  parents = dict(mlm_mask_id=("mlm_probability",), mlm_first_regular_id=("mlm_probability",),
                 jitter_probability=("brightness", "contrast", "saturation"),
                 blur_probability=("blur_sigma",), views=())
  shown = [f"{k}={v}" for k, v in opts.items()
           if v and any(opts[p] for p in parents.get(k, (k,)))]
  return " ".join(shown + ([f"views={opts['views']}"] if opts["views"] > 1 else []))


