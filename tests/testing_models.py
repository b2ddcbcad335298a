"""Shared test helpers: models whose deep layers are alive with random weights.

Shared test helpers: models whose deep layers are alive with random weights, and
visualize.py (a script) loaded as a module."""

import importlib.util
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np


def alive_variables(model, seed=0, image_size=224):
  """Variables with He-normal kernels and small positive biases.

  Unlike the paper's normal(1e-2) init, conv5 is far from all-zero on random images, so
  tests see real switches and real signs."""
  variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
  key = jax.random.key(seed + 1)
  leaves, tree = jax.tree_util.tree_flatten(variables['params'])
  keys = jax.random.split(key, len(leaves))
  def draw(k, leaf):
    if leaf.ndim == 1:
      return jax.random.uniform(k, leaf.shape, maxval=0.1)
    fan_in = np.prod(leaf.shape[:-1])
    return jax.random.normal(k, leaf.shape) * np.sqrt(2.0 / fan_in)
  drawn = [draw(k, leaf) for k, leaf in zip(keys, leaves)]
  return {'params': jax.tree_util.tree_unflatten(tree, drawn)}


def random_images(n, seed=0, size=224):
  """Images on the paper's scale (mean-subtracted 0-255 values)."""
  return 60.0 * jax.random.normal(jax.random.key(100 + seed), (n, size, size, 3))


# The full tier (python -m pytest --full, set by conftest.py): more examples, full widths.
FULL = os.environ.get('ZFJAX_FULL_TESTS') == '1'

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_visualize():
  """visualize.py imported as the module `visualize` (it is a script, not in zfjax)."""
  spec = importlib.util.spec_from_file_location('visualize', REPO / 'visualize.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules['visualize'] = module
  spec.loader.exec_module(module)
  return module
