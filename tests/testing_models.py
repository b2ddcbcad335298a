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

from zfjax import models


def alive_variables(model, seed=0, image_size=224):
  """Variables with He-normal kernels and small positive biases.

  Unlike the paper's normal(1e-2) init, conv5 is far from all-zero on random images, so
  tests see real switches and real signs. Every parameter is drawn here, so the model's
  own init only gives their shapes (jax.eval_shape: no forward pass to run), and the draws
  are one compiled program (eagerly, each shape compiled its own: about 9 s a network)."""
  shapes = jax.eval_shape(model.init, jax.random.key(seed),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  leaves, tree = jax.tree_util.tree_flatten(shapes['params'])

  @models.jit_once
  def draw_all(key):
    drawn = []
    for k, leaf in zip(jax.random.split(key, len(leaves)), leaves):
      if len(leaf.shape) == 1:
        drawn.append(jax.random.uniform(k, leaf.shape, maxval=0.1))
      else:
        fan_in = np.prod(leaf.shape[:-1])
        drawn.append(jax.random.normal(k, leaf.shape) * np.sqrt(2.0 / fan_in))
    return drawn
  return {'params': jax.tree_util.tree_unflatten(tree, draw_all(jax.random.key(seed + 1)))}


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
