"""A trained net with a new last layer, trained whole or in part (fine-tuning, Tables 4-5).

    model, params = finetune.new_head_params(source, num_classes, seed=0, pretrained=True)
    params, losses = finetune.train_network(model, params, images, labels, steps=300,
                                            batch_size=64, learning_rate=1e-3)
    logits = finetune.network_scores(model, params, test_images)

`pretrained=False` gives the same net from a random initialization (the paper's
from-scratch baseline). The update is the trainer's: SGD with momentum and weight decay,
dropout on, the conv filters renormalized after each step.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from zfjax import architecture
from zfjax import loading
from zfjax import models
from zfjax.train import steps
from zfjax.train import train_state
from zfjax.train import transfer_data


def last_dense(spec: architecture.Spec) -> str:
  """The name of a spec's output layer (fc8 in every paper model and ablation)."""
  return [layer.name for layer in spec if isinstance(layer, architecture.Dense)][-1]


def new_head_params(source: loading.Loaded, num_classes: int, seed: int, pretrained: bool):
  """(model, params) of the source architecture with a `num_classes`-way last layer.

  Every other layer comes from the source (pretrained) or all from a fresh init (scratch).
  """
  model = models.from_config(source.config, num_classes)
  params = models.init_params(model, seed, source.image_size)
  if pretrained:
    head = last_dense(model.spec)
    params = {name: (value if name == head else source.params[name])
              for name, value in params.items()}
  return model, params


def network_optimizer(learning_rate: float, momentum: float, weight_decay: float,
                      freeze: tuple = ()) -> optax.GradientTransformation:
  """The trainer's SGD (train_state.create_optimizer), the layers in `freeze` held fixed."""
  optimizer = train_state.create_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)))
  if not freeze:
    return optimizer
  def labels(tree):
    return {name: jax.tree.map(lambda _, n=name: 'frozen' if n in freeze else 'trained', value)
            for name, value in tree.items()}
  return optax.multi_transform({'trained': optimizer, 'frozen': optax.set_to_zero()}, labels)


@functools.partial(jax.jit, static_argnames=('model', 'hyper'), donate_argnums=(1, 2))
def _network_step(model, params, opt_state, images, labels, key, hyper):
  """One update of train_network.

  `hyper` = (learning_rate, momentum, weight_decay, filter_rms_radius, freeze), static,
  so one compiled program per model and setting.
  """
  learning_rate, momentum, weight_decay, radius, freeze = hyper
  optimizer = network_optimizer(learning_rate, momentum, weight_decay, freeze)

  def loss_fn(p):
    logits = model.apply({'params': p}, images, train=True, rngs={'dropout': key})
    return jnp.mean(steps.cross_entropy(logits, labels))

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  clipped = train_state.renormalize_filters(
      {n: v for n, v in params.items() if n not in freeze}, radius)
  return {**params, **clipped}, opt_state, loss


def train_network(model: models.ConvNet, params, images: np.ndarray, labels: np.ndarray, *,
                  steps: int, batch_size: int, learning_rate: float, momentum: float = 0.9,
                  weight_decay: float = 5e-4, filter_rms_radius: float = 0.1, seed: int = 0,
                  freeze: Sequence[str] = ()) -> tuple[Any, np.ndarray]:
  """Trains on (images, labels) in the model's input space; returns (params, step losses).

  SGD with momentum and weight decay, dropout on, the paper's filter renormalization
  after each update (of trained layers); minibatches drawn with replacement by (seed,
  step). Layers named in `freeze` are not updated: their params come back bit for bit.
  """
  unknown = sorted(set(freeze) - set(params))
  if unknown:
    raise transfer_data.TransferError(f'freeze: unknown layer(s) {unknown}; this model has '
                                      f'{sorted(params)}')
  hyper = (float(learning_rate), float(momentum), float(weight_decay),
           float(filter_rms_radius), tuple(sorted(freeze)))
  params = jax.tree.map(jnp.array, params)  # a copy: the step donates its input
  opt_state = network_optimizer(*hyper[:3], hyper[4]).init(params)
  rng = np.random.default_rng((seed, 2))
  losses = []
  for i in range(steps):
    rows = rng.integers(0, len(labels), size=min(batch_size, len(labels)))
    params, opt_state, loss = _network_step(model, params, opt_state, images[rows],
                                            labels[rows], jax.random.fold_in(
                                                jax.random.key(seed), i), hyper)
    losses.append(loss)
  return params, np.asarray(jax.device_get(losses), np.float32)


@functools.partial(jax.jit, static_argnames='model')
def _logits(model, params, images):
  return model.apply({'params': params}, images)


def network_scores(model: models.ConvNet, params, images: np.ndarray,
                   batch_size: int = 256) -> np.ndarray:
  """Inference-mode logits of a network over images, in batches."""
  return np.concatenate([np.asarray(_logits(model, params, images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])
