"""The ConvNet module: parameters, inference vs training, activations, normalization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from zfjax import architecture, models

# ZFNet's geometry, narrow maps: the network of tests/test_deconv.py and others.
SMALL = architecture.zfnet(num_classes=4, conv_features=(12, 16, 24, 24, 16),
                           fc_features=(8, 8))


@pytest.fixture(scope='module')
def small():
  model = models.ConvNet(SMALL)
  return model, {'params': models.init_params(model, 0, 224)}


def test_parameter_names_and_layouts(small):
  _, variables = small
  params = variables['params']
  assert set(params) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8'}
  assert params['conv1']['kernel'].shape == (7, 7, 3, 12)       # HWIO
  assert params['fc6']['kernel'].shape == (6 * 6 * 16, 8)       # (in, out)
  assert float(jnp.abs(params['conv2']['bias']).max()) == 0.0
  assert abs(float(params['fc6']['kernel'].std()) - 1e-2) < 1e-3  # the paper's init


@pytest.mark.slow  # full tier: the reference init compiles for seconds (test_transfer's
# new-head test runs init_params in the default one)
def test_init_params_is_the_models_init():
  """models.init_params: model.init's parameters, compiled once (to float32 rounding)."""
  model = models.ConvNet(architecture.small_zfnet(num_classes=3, conv_features=(4, 4, 4, 4, 4),
                                                  fc_features=(8, 8)))
  expected = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))['params']
  got = models.init_params(model, 1, 32)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  other = models.init_params(model, 2, 32)
  assert not np.array_equal(got['conv1']['kernel'], other['conv1']['kernel'])  # seeded


def test_fc6_reads_pool5_flattened_in_hwc_order(small):
  model, variables = small
  images = jax.random.normal(jax.random.key(1), (2, 224, 224, 3)) * 50
  acts = models.activations(model, variables, images, ('pool5', 'fc6'))
  p = variables['params']['fc6']
  expected = jax.nn.relu(acts['pool5'].reshape(2, -1) @ p['kernel'] + p['bias'])
  np.testing.assert_allclose(acts['fc6'], expected, rtol=1e-5, atol=1e-6)


def test_inference_is_deterministic_and_training_uses_dropout(small):
  model, variables = small
  images = jax.random.normal(jax.random.key(1), (2, 224, 224, 3)) * 50
  variables = jax.tree.map(lambda a: a * 30, variables)
  a = model.apply(variables, images)
  np.testing.assert_array_equal(a, model.apply(variables, images))
  b = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(2)})
  c = model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(3)})
  assert a.shape == b.shape == (2, 4)
  assert not np.allclose(b, c) and not np.allclose(a, b)


def test_activations_are_the_layers_outputs(small):
  model, variables = small
  images = jax.random.normal(jax.random.key(1), (2, 224, 224, 3))[:1] * 50
  acts = models.activations(model, variables, images, ('conv1', 'pool1', 'norm1', 'fc8'))
  assert acts['conv1'].shape == (1, 110, 110, 12)
  assert float(acts['conv1'].min()) >= 0.0                      # post-ReLU
  np.testing.assert_allclose(acts['pool1'], models.max_pool(acts['conv1'], SMALL[1]))
  np.testing.assert_allclose(acts['fc8'], model.apply(variables, images), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown layer.*'conv7'"):
    models.activations(model, variables, images, ('conv7',))


def test_ceil_mode_pool_overhangs_the_end():
  x = jnp.arange(110.0 * 110).reshape(1, 110, 110, 1)
  pooled = models.max_pool(x, architecture.Pool('pool1'))
  assert pooled.shape == (1, 55, 55, 1)
  assert float(pooled[0, -1, -1, 0]) == 110 * 110 - 1          # window rows 108..110(pad)


@pytest.mark.parametrize('beta', [0.75, 0.5])  # 0.75 by square roots, others by power
def test_local_response_norm_equals_the_formula_and_torch(beta):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 5, 7)) * 20, jnp.float32)
  got = np.asarray(models.local_response_norm(x, size=5, alpha=1e-4, beta=beta, k=2.0))
  xn = np.asarray(x)
  expected = np.empty_like(xn)
  for c in range(7):
    window = xn[..., max(0, c - 2):c + 3]
    expected[..., c] = xn[..., c] / (2.0 + 1e-4 * (window ** 2).sum(-1)) ** beta
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  lrn = torch.nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=beta, k=2.0)
  torch_x = torch.tensor(xn).permute(0, 3, 1, 2).requires_grad_()
  torch_out = lrn(torch_x).permute(0, 2, 3, 1)
  np.testing.assert_allclose(got, torch_out.detach().numpy(), rtol=1e-5)
  # The gradient of a weighted sum, against torch's autograd.
  weights = np.random.default_rng(1).standard_normal(xn.shape).astype(np.float32)
  grad = jax.grad(lambda x: (models.local_response_norm(x, 5, 1e-4, beta, 2.0) * weights).sum())
  (torch_out * torch.tensor(weights)).sum().backward()
  torch_grad = torch_x.grad.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(grad(x), torch_grad, rtol=1e-5, atol=1e-6 * np.abs(torch_grad).max())


@pytest.mark.parametrize('images,message', [
    (jnp.zeros((224, 224, 3)), 'rank 4'),
    (jnp.zeros((1, 224, 224, 1)), '3 color channels'),
    (jnp.zeros((1, 3, 224, 224)), '3 color channels'),
    (jnp.zeros((1, 200, 200, 3)), 'fc6 was initialized for 576'),
    (jnp.zeros((1, 4, 4, 3)), 'too small'),
])
def test_bad_images_are_rejected(small, images, message):
  model, variables = small
  with pytest.raises(ValueError, match=message):
    model.apply(variables, images)


def test_alexnet_and_wide_models_run():
  for model in (models.AlexNet(num_classes=5, fc_features=(16, 16)),
                models.ZFNetWide(num_classes=5, fc_features=(16, 16))):
    out, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0),
                                                           jnp.zeros((2, 224, 224, 3))))
    assert out.shape == (2, 5)
