"""The jitted steps: one SGD update, and the evaluation of one net or an ensemble.

    train_step = steps.make_train_step(config, model, optimizer, mesh)
    state, metrics = train_step(state, parallel.global_batch(batch, mesh))
    errors = steps.evaluate(steps.make_eval_step([model], mesh), [params], batches, mesh)
    errors = steps.evaluate_ensemble([(model_a, params_a), (model_b, params_b)], batches)

Dropout masks are drawn per example from (seed, step, example index in the global
batch), so a step is the same computation on any number of devices or processes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from zfjax import models
from zfjax import parallel
from zfjax.train import train_state


def cross_entropy(logits, labels) -> jax.Array:
  """Softmax cross-entropy of each example's logits against its integer label."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _dropout_keys(seed: int, step, first_example, count: int) -> jax.Array:
  """One key per example, from (seed, step, index of the example in the global batch)."""
  step_key = jax.random.fold_in(jax.random.key(seed), step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first_example + jnp.arange(count))


def _train_logits(model, params, images, keys):
  """Training-mode logits, each example with its own dropout key."""
  def one(image, key):
    return model.apply({'params': params}, image[None], train=True, rngs={'dropout': key})[0]
  return jax.vmap(one)(images, keys)


def make_train_step(config, model: models.ConvNet, optimizer: optax.GradientTransformation,
                    mesh) -> Callable[[train_state.TrainState, dict], tuple]:
  """jit(shard_map(step)) of (state, global batch) -> (state, metrics); the state donated.

  Each device takes its rows of the global batch, gradients and metrics are averaged over
  'data' (lax.pmean), and every device applies the same update to its replica. The
  metrics, replicated, are {'loss', 'top1_error', 'grad_norm', 'param_norm', 'lr'} of the
  global batch (loss and error before the update, param_norm after it).
  """
  seed, radius = config.seed, config.filter_rms_radius

  def step(state: train_state.TrainState, batch: dict):
    images, labels = batch['image'], batch['label']
    local = labels.shape[0]
    keys = _dropout_keys(seed, state.step, lax.axis_index(parallel.DATA) * local, local)
    # Per-device gradients: make the replicated params device-varying first, so autodiff
    # does not sum the cotangents itself; pmean below is the one reduction.
    params = lax.pcast(state.params, parallel.DATA, to='varying')

    def loss_fn(params):
      logits = _train_logits(model, params, images, keys)
      return jnp.mean(cross_entropy(logits, labels)), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = lax.pmean(grads, parallel.DATA)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    params = train_state.renormalize_filters(optax.apply_updates(state.params, updates),
                                             radius)
    metrics = {'loss': loss, 'top1_error': jnp.mean(jnp.argmax(logits, -1) != labels)}
    metrics = lax.pmean(metrics, parallel.DATA)
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['param_norm'] = optax.tree.norm(params)
    metrics['lr'] = config.learning_rate * state.plateau.scale
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(parallel.DATA)), out_specs=P())
  return jax.jit(sharded, donate_argnums=0)


def probabilities(model: models.ConvNet, params, images) -> jax.Array:
  """Softmax of the inference-mode logits.

  images (N, H, W, 3), or (N, K, H, W, 3) for K crops of each image, whose probabilities
  are averaged (the paper's 10-crop test).
  """
  if images.ndim == 5:
    n, k = images.shape[:2]
    probs = probabilities(model, params, images.reshape(n * k, *images.shape[2:]))
    return probs.reshape(n, k, -1).mean(axis=1)
  return jax.nn.softmax(model.apply({'params': params}, images))


def count_correct(probs, labels, mask) -> dict[str, jax.Array]:
  """Sums over the unmasked examples: top-1 and top-5 hits, log loss, count.

  An example is a top-k hit when fewer than k classes score strictly higher than its label.
  """
  true_prob = jnp.take_along_axis(probs, labels[:, None], axis=-1)
  rank = jnp.sum(probs > true_prob, axis=-1)
  weight = mask.astype(jnp.float32)
  return {'top1_correct': jnp.sum(weight * (rank < 1)),
          'top5_correct': jnp.sum(weight * (rank < 5)),
          'loss_sum': jnp.sum(weight * -jnp.log(jnp.maximum(true_prob[:, 0], 1e-30))),
          'count': jnp.sum(weight)}


def make_eval_step(model_list: Sequence[models.ConvNet], mesh) -> Callable:
  """jit(shard_map(...)) of (params_list, batch) -> counts of the ensemble over the batch.

  The counts (see count_correct) are of the models' averaged softmax, summed over the
  global batch; one model is an ensemble of one. Batches are {'image', 'label', 'mask'},
  images with or without a crops axis.
  """
  model_list = tuple(model_list)

  def step(params_list, batch):
    probs = sum(probabilities(model, params, batch['image'])
                for model, params in zip(model_list, params_list)) / len(model_list)
    counts = count_correct(probs, batch['label'], batch['mask'])
    return lax.psum(counts, parallel.DATA)

  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(parallel.DATA)),
                               out_specs=P()))


def evaluate(eval_step: Callable, params_list: Sequence[Any], batches: Iterable[dict],
             mesh) -> dict[str, float]:
  """{'top1_error', 'top5_error', 'loss', 'count'} over every batch (padding masked).

  `params_list`: one params tree per model of the eval step, replicated on the mesh.
  """
  total = None
  for batch in batches:
    counts = eval_step(tuple(params_list), parallel.global_batch(batch, mesh))
    total = counts if total is None else jax.tree.map(jnp.add, total, counts)
  if total is None:
    raise ValueError('no evaluation batches')
  total = jax.tree.map(float, jax.device_get(total))
  count = max(total['count'], 1.0)
  return {'top1_error': 1 - total['top1_correct'] / count,
          'top5_error': 1 - total['top5_correct'] / count,
          'loss': total['loss_sum'] / count, 'count': int(total['count'])}


def evaluate_ensemble(members: Sequence[tuple[models.ConvNet, Any]], batches: Iterable[dict],
                      mesh=None) -> dict[str, float]:
  """Errors of the ensemble that averages the softmax of several (model, params) pairs.

  The paper's Table 2 ensembles; models may differ, e.g. 5 ZFNets and the wide one. With
  ten-crop batches each member's crops are averaged first.
  """
  mesh = mesh or parallel.create_mesh()
  params_list = [jax.device_put(params, parallel.replicated(mesh)) for _, params in members]
  eval_step = make_eval_step([model for model, _ in members], mesh)
  return evaluate(eval_step, params_list, batches, mesh)
