"""Augmentation on the device: each operation on a hand-made image, reproducibility, and
that evaluation never sees it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigjax import train
from bigjax.training.programs import Programs
from bigjax.data import augment
from bigjax.registry import ConfigError
from configs import digits


def _marked(h=6, w=8, c=1):
  image = np.zeros((h, w, c), np.float32)
  image[1, 2] = 1.0  # one marked pixel, off every axis of symmetry
  return image


def test_flips_move_a_marked_pixel_where_they_should():
  image = _marked()
  lr = np.asarray(augment.flip_lr(jnp.asarray(image)))
  ud = np.asarray(augment.flip_ud(jnp.asarray(image)))
  assert lr[1, 8 - 1 - 2, 0] == 1.0 and lr.sum() == 1.0
  assert ud[6 - 1 - 1, 2, 0] == 1.0 and ud.sum() == 1.0


def test_rotation_by_90_degrees_equals_rot90():
  image = np.random.default_rng(0).random((7, 7, 3)).astype(np.float32)
  rotated = augment.affine(jnp.asarray(image), 90.0, 1.0, 0.0, 0.0)
  np.testing.assert_allclose(rotated, np.rot90(image, k=1, axes=(0, 1)), atol=1e-5)
  identity = augment.affine(jnp.asarray(image), 0.0, 1.0, 0.0, 0.0)
  np.testing.assert_allclose(identity, image, atol=1e-6)


def test_translation_and_zoom_move_pixels_as_stated():
  image = _marked(9, 9)
  shifted = np.asarray(augment.affine(jnp.asarray(image), 0.0, 1.0, 2.0, -1.0))
  assert shifted[3, 1, 0] == pytest.approx(1.0) and shifted.sum() == pytest.approx(1.0)
  centre = np.zeros((9, 9, 1), np.float32)
  centre[4, 4] = 1.0
  centre[4, 6] = 1.0  # 2 pixels right of the centre ...
  zoomed = np.asarray(augment.affine(jnp.asarray(centre), 0.0, 2.0, 0.0, 0.0))
  assert zoomed[4, 4, 0] == pytest.approx(1.0) and zoomed[4, 8, 0] == pytest.approx(1.0)  # 4


def test_crop_with_padding_keeps_shape_and_shifts_by_the_offset():
  image = _marked()
  same = augment.crop_with_padding(jnp.asarray(image), 2, 2, 2)
  np.testing.assert_array_equal(same, image)
  moved = np.asarray(augment.crop_with_padding(jnp.asarray(image), 2, 0, 1))
  assert moved.shape == image.shape and moved[3, 3, 0] == 1.0 and moved.sum() == 1.0


def test_cutout_zeroes_one_clipped_square():
  image = np.ones((8, 8, 2), np.float32)
  out = np.asarray(augment.cutout(jnp.asarray(image), 4, 4, 4))
  assert (out == 0).sum() == 4 * 4 * 2 and out[2:6, 2:6].max() == 0.0
  corner = np.asarray(augment.cutout(jnp.asarray(image), 4, 0, 0))
  assert (corner[..., 0] == 0).sum() == 2 * 2  # clipped at the border


def test_mixup_mixes_images_and_labels_with_one_weight():
  images = jnp.stack([jnp.zeros((2, 2, 1)), jnp.ones((2, 2, 1))])
  labels = jax.nn.one_hot(jnp.array([0, 1]), 3)
  mixed, soft = augment.mixup(images, labels, jnp.float32(0.75), jnp.array([1, 0]))
  # (Two statements: assert_allclose returns None, so "a and b" would never check b.)
  np.testing.assert_allclose(mixed[0], 0.25)
  np.testing.assert_allclose(mixed[1], 0.75)
  np.testing.assert_allclose(soft, [[0.75, 0.25, 0.0], [0.25, 0.75, 0.0]])


def test_per_image_draws_are_uniform_and_independent():
  n = 20_000
  draws = augment.per_image_draws(jax.random.PRNGKey(0), n)
  assert set(draws) == set(augment.DRAWS)
  u = np.stack([np.asarray(draws[name]) for name in augment.DRAWS], axis=1)
  assert u.shape == (n, len(augment.DRAWS)) and u.min() >= 0.0 and u.max() < 1.0
  np.testing.assert_allclose(u.mean(0), 0.5, atol=0.01)
  correlation = np.corrcoef(u, rowvar=False) - np.eye(u.shape[1])
  assert np.abs(correlation).max() < 0.03  # each transform draws on its own
  offsets = np.asarray(augment._below(draws["crop_y"], 9))  # crop_padding=4: 0..8
  counts = np.bincount(offsets, minlength=10)
  assert counts[9] == 0 and np.all(np.abs(counts[:9] / (n / 9) - 1) < 0.1), counts


ALL_ON = dict(crop_padding=2, flip_lr=True, flip_ud=True, rotate_degrees=15.0, scale=0.1,
              translate=0.1, cutout_size=3, mixup_alpha=0.4)


def test_augmenter_is_reproducible_per_key_and_keeps_shapes():
  fn = jax.jit(augment.make_augmenter(ALL_ON, num_classes=10))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((16, 12, 12, 3), np.float32)),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  a = fn(batch, jax.random.PRNGKey(1))
  b = fn(batch, jax.random.PRNGKey(1))
  c = fn(batch, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.allclose(a["image"], c["image"])
  assert a["image"].shape == batch["image"].shape and a["image"].dtype == jnp.float32
  assert a["label"].shape == (16, 10)
  np.testing.assert_allclose(a["label"].sum(-1), 1.0, rtol=1e-6)


def test_all_off_is_no_augmenter_and_bad_options_are_errors():
  assert augment.make_augmenter(augment.DEFAULTS, 10) is None
  assert augment.make_augmenter({}, 10) is None
  with pytest.raises(ConfigError, match="Unknown config.data.augment option.*'flip'"):
    augment.make_augmenter(dict(flip=True), 10)
  with pytest.raises(ConfigError, match="scale must be in"):
    augment.make_augmenter(dict(scale=1.5), 10)
  with pytest.raises(ConfigError, match="mixup_alpha needs class labels"):
    augment.make_augmenter(dict(mixup_alpha=0.2), None)


def _config(**augment_options):
  config = digits.get_config()
  with config.unlocked():
    config.train.num_epochs = 2
    config.data.augment.update(augment_options)
  return config


@pytest.mark.slow
def test_evaluation_is_never_augmented_and_training_is(tmp_path):
  plain = Programs(_config())
  augmented = Programs(_config(**ALL_ON))
  state = plain.initial_state
  assert plain.evaluate(state, "test") == augmented.evaluate(state, "test")
  images, labels = plain.splits["train"]
  indices = np.arange(32)
  _, m_plain = plain.train_on_indices(state, images, labels, indices)
  _, m_aug = augmented.train_on_indices(augmented.initial_state, images, labels, indices)
  assert float(m_plain["loss"]) != float(m_aug["loss"])


@pytest.mark.slow
def test_augmented_run_resumes_exactly_and_still_learns(tmp_path):
  options = dict(crop_padding=1, rotate_degrees=10.0, cutout_size=2)
  straight = train.run(_config(**options), str(tmp_path / "straight"))
  first = _config(**options)
  first.train.num_epochs = 1
  train.run(first, str(tmp_path / "resumed"))
  resumed = train.run(_config(**options), str(tmp_path / "resumed"))
  assert resumed["resumed_from_step"] > 0
  assert resumed["test_loss"] == straight["test_loss"]
  assert straight["test_accuracy"] > 0.5, straight  # measured 0.71 (chance 0.1), 2 epochs


def test_masked_lm_chooses_15_percent_of_regular_tokens_80_10_10():
  from bigjax.data.augment import IGNORE, mask_tokens
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(4, 260, (64, 128)), jnp.int32)
  tokens = tokens.at[:, 0].set(1).at[:, -8:].set(0)  # [CLS] and padding: never chosen
  inputs, labels = mask_tokens(tokens, jax.random.PRNGKey(0), 0.15, 3, 4, 260)
  inputs, labels, tokens = map(np.asarray, (inputs, labels, tokens))
  chosen = labels != IGNORE
  regular = tokens >= 4
  assert not chosen[~regular].any() and (inputs[~regular] == tokens[~regular]).all()
  assert abs(chosen.sum() / regular.sum() - 0.15) < 0.01
  np.testing.assert_array_equal(labels[chosen], tokens[chosen])
  masked = (inputs == 3)[chosen].mean()
  kept = (inputs == tokens)[chosen].mean()  # (a random token equal to the original: rare)
  assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.03, (masked, kept)
  assert (inputs[chosen & (inputs != 3)] >= 4).all()
  assert (inputs[~chosen] == tokens[~chosen]).all()
  again = mask_tokens(jnp.asarray(tokens), jax.random.PRNGKey(0), 0.15, 3, 4, 260)
  np.testing.assert_array_equal(np.asarray(again[1]), labels)  # a function of the key


def test_masked_token_cross_entropy_counts_only_chosen_positions():
  from bigjax.core import losses
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7))
  labels = jnp.array([[-1, 3, -1, 6, -1], [-1, -1, -1, -1, -1]])
  out = losses.build_loss({"name": "masked_token_cross_entropy"})(logits, {"label": labels})
  log_p = jax.nn.log_softmax(logits)
  expected = -(log_p[0, 1, 3] + log_p[0, 3, 6]) / 2
  np.testing.assert_allclose(out, [expected, 0.0], rtol=1e-6)


def _gradient_image(h=12, w=16, c=1):
  ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                       indexing="ij")
  return np.repeat((ys * 100 + xs)[..., None], c, axis=-1)


def test_resized_crop_of_the_whole_image_is_the_image_and_a_box_is_stretched():
  image = _gradient_image()
  whole = augment.resized_crop(jnp.asarray(image), 0.0, 0.0, 12.0, 16.0)
  np.testing.assert_allclose(whole, image, atol=1e-3)
  # The top-left 6 x 8 box, twice as large: output pixel (i, j) samples (i/2 - 1/4, j/2 - 1/4)
  # (pixel centres), a linear function of the position, so bilinear sampling is exact.
  half = np.asarray(augment.resized_crop(jnp.asarray(image), 0.0, 0.0, 6.0, 8.0))
  ys, xs = np.meshgrid(np.arange(12) / 2 - 0.25, np.arange(16) / 2 - 0.25, indexing="ij")
  expected = np.clip(ys, 0, None) * 100 + np.clip(xs, 0, None)  # edges repeated
  np.testing.assert_allclose(half[..., 0], expected, atol=1e-3)


def test_random_boxes_have_the_stated_areas_and_aspect_ratios():
  u = np.random.default_rng(0).random((4, 20_000)).astype(np.float32)
  top, left, height, width = (np.asarray(v) for v in augment.random_box(
      64, 64, 0.25, *map(jnp.asarray, u)))
  area = height * width / 64 ** 2
  ratio = width / height
  assert area.min() >= 0.25 - 1e-4 and area.max() <= 1.0 + 1e-4
  unclipped = (height < 64) & (width < 64)
  assert unclipped.mean() > 0.7
  assert ratio[unclipped].min() >= 0.75 - 1e-4 and ratio[unclipped].max() <= 4 / 3 + 1e-4
  # Area fraction uniform in [0.25, 1] where not clipped: its mean is 0.625 (clipping lowers it).
  assert 0.55 < area.mean() < 0.63
  np.testing.assert_allclose(np.log(ratio[unclipped]).mean(), 0.0, atol=0.01)  # log-uniform
  assert top.min() >= 0 and (top + height).max() <= 64 + 1e-3
  assert left.min() >= 0 and (left + width).max() <= 64 + 1e-3


def test_colour_jitter_scales_brightness_contrast_and_saturation():
  rgb = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
  same = augment.colour_jitter(jnp.asarray(rgb), 1.0, 1.0, 1.0)
  np.testing.assert_allclose(same, rgb, atol=1e-6)
  brighter = np.asarray(augment.colour_jitter(jnp.asarray(rgb), 1.5, 1.0, 1.0))
  np.testing.assert_allclose(brighter, 1.5 * rgb, atol=1e-6)
  flatter = np.asarray(augment.colour_jitter(jnp.asarray(rgb), 1.0, 0.5, 1.0))
  assert flatter.mean() == pytest.approx(rgb.mean(), abs=1e-5)
  assert flatter.std() == pytest.approx(0.5 * rgb.std(), rel=1e-4)
  gray = np.asarray(augment.colour_jitter(jnp.asarray(rgb), 1.0, 1.0, 0.0))
  luma = rgb @ np.array(augment.GRAY_WEIGHTS, np.float32)
  np.testing.assert_allclose(gray, np.repeat(luma[..., None], 3, -1), atol=1e-5)
  one_channel = rgb[..., :1]
  np.testing.assert_allclose(augment.colour_jitter(jnp.asarray(one_channel), 1.0, 1.0, 0.0),
                             one_channel, atol=1e-6)  # saturation leaves gray images alone


def test_gaussian_blur_matches_scipy_and_keeps_a_flat_image():
  from scipy import ndimage
  image = np.random.default_rng(0).random((12, 12, 2)).astype(np.float32)
  blurred = np.asarray(augment.gaussian_blur(jnp.asarray(image), 1.0, 3))
  expected = ndimage.gaussian_filter(image, sigma=(1.0, 1.0, 0), mode="mirror", truncate=3.0)
  np.testing.assert_allclose(blurred, expected, atol=1e-5)
  flat = np.full((9, 9, 1), 0.7, np.float32)
  np.testing.assert_allclose(augment.gaussian_blur(jnp.asarray(flat), 2.0, 4), flat, atol=1e-6)


SSL = dict(resized_crop=0.25, flip_lr=True, brightness=0.4, contrast=0.4, saturation=0.4,
           jitter_probability=0.8, grayscale_probability=0.2, blur_sigma=1.5,
           blur_probability=0.5)


def test_each_self_supervised_transform_is_applied_with_its_probability():
  n = 4000
  images = jnp.asarray(np.random.default_rng(0).random((n, 8, 8, 3)).astype(np.float32))
  batch = {"image": images, "label": jnp.zeros(n, jnp.int32)}
  key = jax.random.PRNGKey(3)

  def changed(**options):
    out = jax.jit(augment.make_augmenter(options, 10))(batch, key)["image"]
    return float(np.mean(np.abs(np.asarray(out - images)).reshape(n, -1).max(-1) > 1e-6))

  assert changed(brightness=0.4, jitter_probability=0.8) == pytest.approx(0.8, abs=0.03)
  assert changed(grayscale_probability=0.2) == pytest.approx(0.2, abs=0.03)
  # A blur of sigma near 0.1 (the low end, as SimCLR's) changes nothing in float32: check
  # the blur against its own draws instead.
  draws = augment.per_image_draws(jax.random.fold_in(key, augment.SECOND_STREAM), n,
                                  augment.SECOND_DRAWS)
  blurred = jax.jit(augment.make_augmenter(dict(blur_sigma=1.5, blur_probability=0.5), 10))(
      batch, key)["image"]
  moved = np.abs(np.asarray(blurred - images)).reshape(n, -1).max(-1) > 1e-6
  chosen, sigma = np.asarray(draws["blur"]) < 0.5, 0.1 + 1.4 * np.asarray(draws["sigma"])
  assert not moved[~chosen].any() and moved[chosen & (sigma > 0.3)].all()
  assert chosen.mean() == pytest.approx(0.5, abs=0.03)
  assert changed(resized_crop=0.25) > 0.99
  # Brightness factors are uniform in [0.6, 1.4]: the mean ratio is 1 and the spread 0.8/sqrt(12).
  out = jax.jit(augment.make_augmenter(dict(brightness=0.4, jitter_probability=1.0), 10))(
      batch, key)["image"]
  factors = np.asarray(out[:, 0, 0, 0] / images[:, 0, 0, 0])
  assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5
  assert factors.mean() == pytest.approx(1.0, abs=0.01)
  assert factors.std() == pytest.approx(0.8 / np.sqrt(12), rel=0.05)


def test_two_views_are_independent_augmentations_stacked_with_partners():
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((6, 10, 10, 3), np.float32)),
           "label": jnp.arange(6, dtype=jnp.int32), "weight": jnp.linspace(0, 1, 6)}
  key = jax.random.PRNGKey(5)
  out = jax.jit(augment.make_augmenter(dict(SSL, views=2), 10))(batch, key)
  assert out["image"].shape == (12, 10, 10, 3)
  np.testing.assert_array_equal(out["partner"], [6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(out["label"], np.tile(np.arange(6), 2))
  np.testing.assert_allclose(out["weight"], np.tile(np.linspace(0, 1, 6), 2))
  # View 0 is what one view with the same key gives; view 1 differs from it.
  single = jax.jit(augment.make_augmenter(SSL, 10))(batch, key)
  np.testing.assert_allclose(out["image"][:6], single["image"], atol=1e-6)
  assert np.abs(np.asarray(out["image"][:6] - out["image"][6:])).mean() > 0.01
  # The first stream's draws are unchanged by the new options (reproducibility of old runs).
  old = jax.jit(augment.make_augmenter(dict(flip_lr=True), 10))(batch, key)
  new = jax.jit(augment.make_augmenter(dict(flip_lr=True, brightness=0.1,
                                            jitter_probability=0.0), 10))(batch, key)
  np.testing.assert_array_equal(old["image"], new["image"])


def test_bad_self_supervised_options_are_one_line_errors():
  for options, message in ((dict(resized_crop=1.0), "resized_crop is the smallest area"),
                           (dict(brightness=1.5), "brightness must be in"),
                           (dict(blur_probability=2.0), "blur_probability must be in"),
                           (dict(views=3), "views must be 1 or 2"),
                           (dict(views=2, mixup_alpha=0.2), "mixup_alpha together")):
    with pytest.raises(ConfigError, match=message):
      augment.make_augmenter(options, 10)
  with pytest.raises(ConfigError, match="views is for images"):
    augment.make_augmenter(dict(views=2), None, vocab_size=100, tokens=True)
