"""The training state and how it changes outside the step: optimizer, plateau, filter clipping.

    optimizer = train_state.create_optimizer(config)     # SGD + momentum, decay on weights
    state = train_state.create_train_state(config, model, optimizer, mesh, image_shape)
    params = train_state.renormalize_filters(params, config.filter_rms_radius)
    plateau = train_state.update_plateau(config, state.plateau, top1_error)

The optimizer and the plateau rule are the paper's (Sec. 3); docs/training.md says how.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from zfjax import checkpoints
from zfjax import models
from zfjax import parallel


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs: step, params, SGD momentum, learning-rate plateau."""
  step: jax.Array
  params: Any
  opt_state: Any
  plateau: optax.contrib.ReduceLROnPlateauState


# ----------------------------------------------------------------------------- optimizer


def _is_kernel(path, leaf) -> bool:
  del leaf
  return path[-1].key == 'kernel'


def create_optimizer(config) -> optax.GradientTransformation:
  """SGD with momentum at config.learning_rate, weight decay added to the weights' gradient.

  g + weight_decay * w (weights only, not biases), then PyTorch's momentum form
  (v = momentum * v + g, w -= lr * v). The plateau scale multiplies the result in the
  train step.
  """
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(_is_kernel, params)
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.sgd(config.learning_rate, momentum=config.momentum or None))


def plateau_rule(config) -> optax.GradientTransformationExtraArgs:
  """Optax's reduce-on-plateau, fed one validation error per evaluation."""
  return optax.contrib.reduce_on_plateau(factor=1.0 / config.lr_decay_factor,
                                         patience=max(1, config.lr_patience))


def update_plateau(config, plateau, top1_error: float):
  """The plateau state after an evaluation with `top1_error`.

  Its `scale` is divided by lr_decay_factor once the error has not improved for
  lr_patience evaluations (lr_patience <= 0 keeps the learning rate fixed).
  """
  if config.lr_patience <= 0:
    return plateau
  _, plateau = plateau_rule(config).update({}, plateau, value=top1_error)
  return plateau


# ----------------------------------------------------------------------------- state


def init_train_state(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                     image_shape: Sequence[int]) -> TrainState:
  """A fresh TrainState (pure; jit it with out_shardings to place it)."""
  images = jnp.zeros((1, *image_shape), jnp.float32)
  params = model.init(jax.random.key(config.seed), images)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), plateau=plateau_rule(config).init(params))


def create_train_state(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                       mesh, image_shape: Sequence[int]) -> TrainState:
  """A fresh TrainState, created directly replicated over the mesh.

  On CPU the init is compiled at XLA's lowest optimization level: the program runs once,
  and XLA's CPU optimizer takes seconds per random-number kernel (about 10 s for ZFNet's
  layers, 2 s at level 0). The values agree with level 3's to about 1e-7.
  """
  init = lambda: init_train_state(config, model, optimizer, image_shape)
  on_cpu = mesh.devices.flat[0].platform == 'cpu'
  options = models.ONE_SHOT_CPU_OPTIONS if on_cpu else None
  return jax.jit(init, out_shardings=parallel.replicated(mesh), compiler_options=options)()


def abstract_train_state(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                         mesh, image_shape: Sequence[int]) -> TrainState:
  """Shapes, dtypes and replicated shardings of the TrainState: the restore target."""
  shapes = jax.eval_shape(lambda: init_train_state(config, model, optimizer, image_shape))
  return checkpoints.abstract(shapes, parallel.replicated(mesh))


# ----------------------------------------------------------------------------- filters


def renormalize_filters(params, radius: float):
  """Feature scale clipping (Sec. 3): conv filters with RMS above `radius` scaled back to it.

  A filter is a kernel's output channel (RMS over height, width and input channels); the
  others are returned unchanged, bit for bit. radius <= 0: no-op. Conv kernels are the
  4-D 'kernel' leaves (HWIO).
  """
  if radius <= 0:
    return params
  def clip(path, leaf):
    if path[-1].key != 'kernel' or leaf.ndim != 4:
      return leaf
    rms = jnp.sqrt(jnp.mean(jnp.square(leaf), axis=(0, 1, 2), keepdims=True))
    return jnp.where(rms > radius, leaf * (radius / rms), leaf)
  return jax.tree_util.tree_map_with_path(clip, params)


def filter_rms_per_layer(params) -> dict[str, jax.Array]:
  """{conv layer: the RMS of each of its filters}, as `renormalize_filters` measures it."""
  return {name: jnp.sqrt(jnp.mean(jnp.square(layer['kernel']), axis=(0, 1, 2)))
          for name, layer in params.items() if layer['kernel'].ndim == 4}
