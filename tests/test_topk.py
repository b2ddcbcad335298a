"""The streaming top-k search against brute force, and the Fig. 2 patches.

The streaming top-k search against a brute-force NumPy search (ties, padding, masks,
several layers, k beyond the data, 4 devices), and the Fig. 2 patches: image crops
against the receptive fields, projections against deconv.project_units."""

import os
import pathlib
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zfjax import architecture, deconv, models, topk
from testing_models import alive_variables, random_images

# ZFNet's conv geometry without the classifier, narrow maps (the conv widths of
# tests/test_deconv.py: the same weights' shapes, whose random draws a test session then
# compiles once), 96x96 images: conv1 46x46x12, pool1 23, conv2 10, pool2 5x5x16,
# conv3-5 5x5 (borders everywhere, as at 224), conv5 16 maps.
SPEC = architecture.without(
    architecture.zfnet(num_classes=4, conv_features=(12, 16, 24, 24, 16), fc_features=(4, 4)),
    'fc6', 'fc7', 'fc8')
SIZE = 96
LAYERS = ('conv1', 'pool2', 'conv5')
# Most searches below run LAYERS, k = K and batches of 4: one compiled step between them.
K = 5


def num_channels(layer):
  return architecture.shapes(SPEC, (SIZE, SIZE, 3))[layer][-1]
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def model():
  return models.ConvNet(SPEC)


@pytest.fixture(scope='module')
def variables(model):
  return alive_variables(model, image_size=SIZE)


def dataset(n=11):
  """Random images with ties planted: example 3 repeats example 1, 5 and 8 are all zero.

  (The first n of one draw of 11: one compiled program for every n.)"""
  images = np.array(random_images(11, size=SIZE))[:n]
  if n > 3:
    images[3] = images[1]
  images[[i for i in (5, 8) if i < n]] = 0.0
  return images


def in_batches(images, batch_size):
  return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def brute_force(model, variables, images, layer, k):
  """For each channel: every image's first maximum, sorted by (-value, image); top k."""
  feature_map = np.asarray(models.activations(model, variables, jnp.asarray(images),
                                              (layer,))[layer])
  n, _, width, channels = feature_map.shape
  flat = feature_map.reshape(n, -1, channels)
  where = flat.argmax(axis=1)                                        # (N, C)
  value = flat.max(axis=1)
  out = {name: np.full((channels, k), fill, dtype) for name, fill, dtype in (
      ('values', -np.inf, np.float32), ('example', -1, np.int32), ('y', -1, np.int32),
      ('x', -1, np.int32))}
  for c in range(channels):
    order = np.lexsort((np.arange(n), -value[:, c]))[:k]
    m = len(order)
    out['values'][c, :m] = value[order, c]
    out['example'][c, :m] = order
    out['y'][c, :m], out['x'][c, :m] = divmod(where[order, c], width)
  return out


def assert_same(result, expected):
  np.testing.assert_allclose(result.values, expected['values'], rtol=1e-5, atol=1e-5)
  for name in ('example', 'y', 'x'):
    np.testing.assert_array_equal(getattr(result, name), expected[name], err_msg=name)


# ------------------------------------------------------------------------------ search


def test_search_equals_brute_force_with_ties_and_a_short_last_batch(model, variables):
  images = dataset()
  results = topk.search(model, variables, in_batches(images, 4), layers=LAYERS, k=K)
  assert set(results) == set(LAYERS)
  for layer in LAYERS:
    assert results[layer].values.shape == (num_channels(layer), K)
    assert_same(results[layer], brute_force(model, variables, images, layer, K))
  # Ties between images go to the earlier example: the duplicate (1, 3) and the zero
  # images (5, 8) are adjacent wherever they appear, earlier one first.
  for a, b in ((1, 3), (5, 8)):
    example = np.asarray(results['conv5'].example)
    for row in example:
      if a in row and b in row:
        assert list(row).index(a) < list(row).index(b)


def test_all_ties_within_and_across_images_follow_row_major_then_example_order(
    model, variables):
  """Constant maps: every location and every image ties."""
  zeros = np.zeros((6, SIZE, SIZE, 3), np.float32)
  result = topk.search(model, variables, in_batches(zeros, 4), layers=LAYERS, k=K)['conv1']
  np.testing.assert_array_equal(result.example,
                                np.tile(np.arange(K), (num_channels('conv1'), 1)))
  np.testing.assert_array_equal(result.y, 0)   # conv1 of a zero image: the bias everywhere
  np.testing.assert_array_equal(result.x, 0)


def test_k_larger_than_the_dataset_leaves_unfilled_entries(model, variables):
  images = dataset(3)
  # Three images in a batch of four (a masked zero row): the usual compiled step.
  batch = {'image': np.concatenate([images, np.zeros_like(images[:1])]),
           'mask': np.array([1, 1, 1, 0], bool)}
  results = topk.search(model, variables, [batch], layers=LAYERS, k=K)
  for layer in LAYERS:
    result = results[layer]
    assert_same(result, brute_force(model, variables, images, layer, K))
    assert np.all(np.isneginf(result.values[:, 3:]))
    assert np.all(np.asarray(result.example[:, 3:]) == -1)
  empty = topk.search(model, variables, [], layers='conv5', k=2)['conv5']
  assert empty.values.shape == (num_channels('conv5'), 2)
  assert np.all(np.asarray(empty.example) == -1)


def test_dict_batches_with_masks_skip_padding_rows(model, variables):
  images = dataset(7)
  # Padding rows full of huge values (they would win every channel) in the middle and at
  # the end of batches; only the valid rows are numbered. The planted tie (3 repeats 1)
  # sits at the same batch position in both batches: XLA's CPU convolution may round the
  # same image differently at another position, which would make it no tie at all.
  loud = np.full((SIZE, SIZE, 3), 500.0, np.float32)
  batches = []
  for rows, mask in (((0, 1, None, None), (1, 1, 0, 0)), ((2, 3, None, None), (1, 1, 0, 0)),
                     ((4, None, 5, None), (1, 0, 1, 0)), ((6, None, None, None), (1, 0, 0, 0)),
                     ((None, None, None, None), (0, 0, 0, 0))):
    batch = np.stack([loud if r is None else images[r] for r in rows])
    batches.append({'image': batch, 'label': np.zeros(4, np.int32),
                    'mask': np.array(mask, bool)})
  results = topk.search(model, variables, batches, layers=LAYERS, k=K)
  for layer in LAYERS:
    assert_same(results[layer], brute_force(model, variables, images, layer, K))


def test_result_does_not_depend_on_batch_size(model, variables):
  images = dataset(9)
  one = topk.search(model, variables, in_batches(images, 9), layers=LAYERS, k=K)
  many = topk.search(model, variables, in_batches(images, 4), layers=LAYERS, k=K)
  for layer in LAYERS:
    assert_same(many[layer], one[layer]._asdict())


def test_bad_input_is_a_clear_value_error(model, variables):
  images = dataset(2)
  with pytest.raises(ValueError, match='map layers'):
    topk.search(model, variables, [images], layers='fc6')
  with pytest.raises(ValueError, match='positive'):
    topk.search(model, variables, [images], k=0)
  with pytest.raises(ValueError, match='ten-crop'):
    topk.search(model, variables, [images[:, None]])
  with pytest.raises(ValueError, match="'image'"):
    topk.search(model, variables, [{'pixels': images}])


SHARDED = """
import pickle, sys
import jax, numpy as np
sys.path.insert(0, 'tests')
import test_topk as t
from zfjax import models, topk
assert len(jax.devices()) == 4, jax.devices()
with open(sys.argv[1], 'rb') as f:
  variables, images = pickle.load(f)
out = {}
for batch_size in (4, 3):   # 4 splits over 4 devices; 3 is padded to 4 (no recompile)
  results = topk.search(models.ConvNet(t.SPEC), variables, t.in_batches(images, batch_size),
                        t.LAYERS, k=t.K)
  for layer, result in results.items():
    assert result.values.sharding.is_fully_replicated
    assert len(result.values.sharding.device_set) == 4
    for name, value in result._asdict().items():
      out[f'{batch_size}/{layer}/{name}'] = np.asarray(value)
np.savez(sys.argv[2], **out)
"""


def test_sharded_over_four_devices_equals_one_device(model, variables, tmp_path):
  images = dataset()
  with open(tmp_path / 'inputs.pkl', 'wb') as f:
    pickle.dump((jax.tree.map(np.asarray, variables), images), f)
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  subprocess.run([sys.executable, '-c', SHARDED, str(tmp_path / 'inputs.pkl'),
                  str(tmp_path / 'sharded.npz')], check=True, cwd=REPO, env=env)
  sharded = np.load(tmp_path / 'sharded.npz')
  results = topk.search(model, variables, in_batches(images, 4), layers=LAYERS, k=K)
  for batch_size in (4, 3):
    for layer in LAYERS:
      got = topk.TopK(*(sharded[f'{batch_size}/{layer}/{name}']
                        for name in topk.TopK._fields))
      assert_same(got, results[layer]._asdict())


# ------------------------------------------------------------------- Fig. 2 material


@pytest.fixture(scope='module')
def found(model, variables):
  images = dataset()
  results = topk.search(model, variables, in_batches(images, 4), layers=LAYERS, k=K)
  return images, results


def test_gather_images_returns_the_examples_and_stops_early(found):
  images, results = found
  gathered = topk.gather_images(in_batches(images, 4), results['conv5'])
  wanted = np.unique(np.asarray(results['conv5'].example))
  np.testing.assert_array_equal(gathered.example, wanted)
  np.testing.assert_array_equal(gathered.image, images[wanted])

  def batches():
    yield {'image': images[:4], 'mask': np.array([1, 0, 1, 1], bool)}
    yield {'image': images[4:8], 'mask': np.ones(4, bool)}
    raise AssertionError('read past the last example needed')
  gathered = topk.gather_images(batches(), np.array([[4, -1], [0, 2]]))
  np.testing.assert_array_equal(gathered.example, [0, 2, 4])
  np.testing.assert_array_equal(gathered.image, images[[0, 3, 5]])
  with pytest.raises(ValueError, match='hold 11 examples'):
    topk.gather_images(in_batches(images, 4), [11])


@pytest.mark.parametrize('layer', LAYERS)
def test_crops_are_the_receptive_field_pixels(model, found, layer):
  images, results = found
  result = results[layer]
  gathered = topk.gather_images(in_batches(images, 4), result)
  patches = topk.crops(model, result, gathered, layer)
  size = architecture.windows(SPEC, layer)[-1][1].size
  assert patches.pixels.shape == (num_channels(layer), K, size, size, 3)
  assert patches.valid.shape == (num_channels(layer), K, size, size)
  pixels, valid = np.asarray(patches.pixels), np.asarray(patches.valid)
  for c in range(num_channels(layer)):
    for j in range(K):
      n, y, x = (int(a[c, j]) for a in (result.example, result.y, result.x))
      (r0, r1), (c0, c1) = architecture.receptive_field(SPEC, layer, y, x, (SIZE, SIZE, 3))
      top, left = int(patches.top[c, j]), int(patches.left[c, j])
      expected = np.zeros((size, size, 3), np.float32)
      expected[r0 - top:r1 - top, c0 - left:c1 - left] = images[n, r0:r1, c0:c1]
      np.testing.assert_array_equal(pixels[c, j], expected)
      assert valid[c, j].sum() == (r1 - r0) * (c1 - c0)
      assert valid[c, j, r0 - top:r1 - top, c0 - left:c1 - left].all()


def test_unfilled_entries_give_empty_patches(model, variables):
  images = dataset(2)
  result = topk.search(model, variables, [images], layers='conv2', k=3)['conv2']
  gathered = topk.gather_images([images], result)
  for patches in (topk.crops(model, result, gathered, 'conv2'),
                  topk.project(model, variables, result, gathered, 'conv2')):
    assert not np.asarray(patches.valid[:, 2]).any()
    assert not np.asarray(patches.pixels[:, 2]).any()
    assert np.asarray(patches.valid[:, :2]).any(axis=(-1, -2)).all()


# conv5 in the full tier (the default one projects conv5 in the shared-forward test)
@pytest.mark.parametrize('layer', ['conv1', pytest.param('conv5', marks=pytest.mark.slow)])
def test_projections_equal_project_units_on_the_same_units(model, variables, found, layer):
  images, results = found
  result = results[layer]
  channels = [6, 1, 3]
  gathered = topk.gather_images(in_batches(images, 4), result)
  # Small calls: several calls, padded units and images.
  patches = topk.project(model, variables, result, gathered, layer, channels=channels,
                         images_per_call=2, units_per_call=4)
  size = architecture.windows(SPEC, layer)[-1][1].size
  assert patches.pixels.shape == (3, K, size, size, 3)
  example, y, x = (np.asarray(a)[channels].reshape(-1)
                   for a in (result.example, result.y, result.x))
  expected = deconv.project_units(model, variables, jnp.asarray(images), layer, example,
                                  np.repeat(channels, K), y, x)
  pasted = topk.paste(patches, images.shape[1:]).reshape(expected.shape)
  scale = float(jnp.abs(expected).max())
  assert scale > 0
  # Nothing of a projection lies outside its unit's exact receptive field.
  np.testing.assert_allclose(pasted, expected, atol=1e-5 * scale)
  np.testing.assert_array_equal(patches.valid, topk.crops(
      model, result, gathered, layer, channels=channels).valid)


@pytest.mark.parametrize('rule', ['deconvnet', pytest.param('guided', marks=pytest.mark.slow)])
def test_projecting_several_layers_from_shared_forward_passes(model, variables, found, rule):
  """project_layers (one forward pass per group of images, windows only) equals project."""
  images, results = found
  layers = ('conv1', 'conv5')
  gathered = topk.gather_images(in_batches(images, 4), [results[name] for name in layers])
  wanted = {name: (results[name], np.broadcast_to(
      np.arange(results[name].example.shape[0])[:, None], results[name].example.shape))
            for name in layers}
  shared = topk.project_layers(model, variables, wanted, gathered, rule=rule,
                               images_per_call=3, units_per_call=8)
  for name in layers:
    expected = topk.project(model, variables, results[name], gathered, name, rule=rule)
    scale = float(np.abs(expected.pixels).max())
    assert scale > 0 and shared[name].pixels.shape == expected.pixels.shape
    np.testing.assert_allclose(shared[name].pixels, expected.pixels, atol=1e-6 * scale)
    np.testing.assert_array_equal(shared[name].valid, expected.valid)
  # The caches the search keeps from its own forward pass: the same top-k, the same pixels.
  kept = []
  again = topk.search(model, variables, in_batches(images, 4), layers, K, keep=kept,
                      keep_rule=rule)
  for name in layers:
    np.testing.assert_array_equal(again[name].example, results[name].example)
  assert kept[-1].examples.tolist() == [8, 9, 10, -1]  # 11 images in 4s: a padded row
  from_kept = topk.gather_images(kept, [results[name] for name in layers])
  np.testing.assert_array_equal(from_kept.example, gathered.example)
  np.testing.assert_array_equal(from_kept.image, gathered.image)
  with pytest.raises(ValueError, match='hold 8 examples'):
    topk.gather_images(kept[:2], [10])
  from_search = topk.project_layers(model, variables, wanted, gathered, rule=rule, kept=kept)
  for name in layers:
    np.testing.assert_allclose(from_search[name].pixels, shared[name].pixels, rtol=1e-5,
                               atol=1e-6 * float(np.abs(shared[name].pixels).max()))
  with pytest.raises(ValueError, match='do not hold every example'):
    topk.project_layers(model, variables, wanted, gathered, rule=rule, kept=kept[:1])
  with pytest.raises(ValueError, match='keep must be a list'):
    topk.search(model, variables, in_batches(images, 4), ['pool5'], K, keep=[])
  # The default grouping (as many images as a cache holds); conv1 alone needs no cache.
  alone = topk.project_layers(model, variables, {'conv1': wanted['conv1']}, gathered,
                              rule=rule)
  np.testing.assert_allclose(alone['conv1'].pixels, shared['conv1'].pixels, rtol=1e-6, atol=0)
  # Its caches are evened over all the images given, not the ones the entries name: a call
  # whose entries name fewer images compiles no new cache or projection program.
  entries, channel = wanted['conv1']
  first = topk.TopK(*(np.asarray(a)[:, :1] for a in entries))
  named = lambda e: np.unique(e.example[e.example >= 0]).size
  assert named(first) < named(entries)
  compiled = []
  def listener(event, duration, fun_name='', **kwargs):  # pylint: disable=unused-argument
    if event == '/jax/core/compile/backend_compile_duration' and (
        '_project_cached' in fun_name or '_cache' in fun_name):
      compiled.append(fun_name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fewer = topk.project_layers(model, variables, {'conv1': (first, channel[:, :1])},
                                gathered, rule=rule)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiled, compiled
  np.testing.assert_allclose(fewer['conv1'].pixels, alone['conv1'].pixels[:, :1], rtol=1e-6,
                             atol=0)
  cache = deconv.forward_cache(model, variables, jnp.asarray(images[:2]), ['conv1'])
  with pytest.raises(ValueError, match="no 'conv5'"):
    deconv.project_cached(model, variables, cache, 'conv5', [0], [0], [0], [0])
  # count: only the chunks (16 units) that hold the first `count` units run, the rest is 0.
  units = [np.arange(20) % 2, np.arange(20) % 5, np.arange(20) % 7, np.arange(20) % 9]
  seeds = np.linspace(1.0, 2.0, 20)  # a unit's own value may be 0
  every = np.asarray(deconv.project_cached(model, variables, cache, 'conv1', *units,
                                           chunk_size=32, value=seeds))
  assert np.abs(every).max(axis=(1, 2, 3)).min() > 0
  for count in (0, 5, 17, 20):
    some = np.asarray(deconv.project_cached(model, variables, cache, 'conv1', *units,
                                            chunk_size=32, value=seeds, count=count))
    np.testing.assert_array_equal(some[:count], every[:count])
    assert not some[count:].any()
  with pytest.raises(ValueError, match='count must be an int from 0 to the number of units'):
    deconv.project_cached(model, variables, cache, 'conv1', *units, count=21)
