"""Frozen features of a trained net and the linear classifiers trained on them (Tables 4-7).

    features = probes.extract_features(source, data, ('conv5', 'fc7'), grid=4)
    scores = probes.probe(features['fc7'][train], labels[train], features['fc7'][test],
                          'softmax', num_classes, config)
    accuracy = probes.mean_per_class_accuracy(scores.argmax(1), labels[test])

A conv layer's post-ReLU map is average-pooled to grid x grid cells and flattened, a dense
layer's output is used as it is, and each feature is standardized with the training
split's statistics. The softmax is L-BFGS on the L2-regularized cross-entropy; the SVM is
scikit-learn's LinearSVC (the `train` extra).
"""

from __future__ import annotations

import functools
import json
import pathlib
import time
from typing import Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from zfjax import architecture
from zfjax import extras
from zfjax import loading
from zfjax import models
from zfjax.train import transfer_data

CLASSIFIERS = ('softmax', 'svm')


# ----------------------------------------------------------------------------- features


def pooled(x: jax.Array, grid: int) -> jax.Array:
  """A layer's output as one feature vector per image.

  (N, H, W, C) maps are average-pooled to grid x grid and flattened in HWC order; (N, F)
  vectors are unchanged.
  """
  if x.ndim == 4:
    x = models.adaptive_avg_pool(x, min(grid, x.shape[1], x.shape[2]))
  return x.reshape(x.shape[0], -1)


def extract_features(source: loading.Loaded, data: transfer_data.TransferData,
                     layers: Sequence[str], *, grid: int = 4,
                     batch_size: int = 128) -> dict[str, np.ndarray]:
  """{layer: (N, D) float32 features} of every image of `data`.

  One forward pass per batch (the last batch padded to the same shape, so one compiled
  program).
  """
  layers = tuple(dict.fromkeys(layers))
  architecture.check_layers(source.model.spec, layers, 'feature layers')

  @jax.jit
  def forward(images):
    outputs = models.activations(source.model, source.variables, images, layers)
    return {name: pooled(outputs[name], grid) for name in layers}

  n = len(data.labels)
  chunks = {name: [] for name in layers}
  started = time.perf_counter()
  for first in range(0, n, batch_size):
    rows = np.arange(first, first + batch_size)
    valid = rows < n
    batch = data.model_input(np.where(valid, rows, 0))
    for name, value in jax.device_get(forward(batch)).items():
      chunks[name].append(np.asarray(value)[valid])
    done = min(first + batch_size, n)
    logging.info('features: %d/%d images (%.0f images/s)', done, n,
                 done / (time.perf_counter() - started))
  return {name: np.concatenate(parts) for name, parts in chunks.items()}


def cached_features(workdir: pathlib.Path, key: dict, compute: Callable[[], dict]) -> dict:
  """`compute()`'s features, cached in workdir/features.npz while `key` stays the same.

  `key` (source, dataset, layers, pooling) is saved beside them in workdir/features.json.
  """
  npz, meta = workdir / 'features.npz', workdir / 'features.json'
  if npz.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
    with np.load(npz) as saved:
      logging.info('features from the cache %s', npz)
      return {name: saved[name] for name in saved.files}
  features = compute()
  temp = workdir / 'features.tmp.npz'
  np.savez(temp, **features)
  temp.replace(npz)
  meta.write_text(json.dumps(key, indent=2) + '\n')
  return features


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both arrays scaled by the training features' per-dimension mean and std.

  Constant dimensions are left at zero.
  """
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > 1e-8, std, 1.0)
  return (train - mean) / std, (test - mean) / std


# ----------------------------------------------------------------------------- measures


def mean_per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  """The mean over the classes in `labels` of the fraction of each class predicted right.

  Caltech's measure; equal to accuracy on balanced sets.
  """
  classes = np.unique(labels)
  return float(np.mean([np.mean(predictions[labels == c] == c) for c in classes]))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-class average precision of (N, C) scores against (N, C) 0/1 targets.

  Scikit-learn's: the area under the precision-recall step curve; NaN for a class with no
  positive example.
  """
  metrics = extras.require('sklearn.metrics', 'train', 'average precision (PASCAL VOC)')
  return np.asarray([metrics.average_precision_score(targets[:, c], scores[:, c])
                     if targets[:, c].any() else np.nan for c in range(targets.shape[1])])


# ----------------------------------------------------------------------------- classifiers


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def _fit_softmax(x, targets, num_classes: int, l2: float, steps: int):
  params = {'kernel': jnp.zeros((x.shape[1], num_classes)), 'bias': jnp.zeros(num_classes)}

  def loss(p):
    logits = x @ p['kernel'] + p['bias']
    return (jnp.mean(optax.softmax_cross_entropy(logits, targets))
            + l2 * jnp.sum(jnp.square(p['kernel'])))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def iteration(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(p, updates), state), value

  (params, _), values = lax.scan(iteration, (params, solver.init(params)), length=steps)
  return params, values


def fit_softmax(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                l2: float = 1e-3, steps: int = 100) -> dict:
  """A softmax classifier {'kernel' (D, C), 'bias' (C,)}, fitted deterministically.

  Minimizes the mean cross-entropy plus l2 * |kernel|^2 (a convex problem) by `steps`
  L-BFGS iterations from zero. `labels`: (N,) class indices, or (N, C) 0/1 label sets,
  whose target distribution is uniform over the image's labels (the paper's softmax on
  VOC).
  """
  labels = np.asarray(labels)
  if labels.ndim == 1:
    targets = jax.nn.one_hot(labels, num_classes)
  else:
    targets = labels / np.maximum(labels.sum(axis=1, keepdims=True), 1)
  params, _ = _fit_softmax(jnp.asarray(features, jnp.float32),
                           jnp.asarray(targets, jnp.float32), num_classes, float(l2), steps)
  return jax.device_get(params)


def softmax_scores(head: dict, features: np.ndarray) -> np.ndarray:
  """The logits of a `fit_softmax` head on (N, D) features."""
  return np.asarray(features @ head['kernel'] + head['bias'])


def fit_svm(features: np.ndarray, labels: np.ndarray, *, c: float = 1.0, seed: int = 0):
  """A one-vs-rest linear SVM (scikit-learn's LinearSVC, squared hinge loss, penalty C)."""
  svm = extras.require('sklearn.svm', 'train', 'the linear SVM probes')
  return svm.LinearSVC(C=c, dual='auto', random_state=seed, max_iter=5000).fit(features, labels)


def probe(train_x, train_y, test_x, classifier: str, num_classes: int, config) -> np.ndarray:
  """Scores (N_test, C) of one classifier trained on standardized features.

  `classifier`: 'softmax' (config.softmax_l2, softmax_steps) or 'svm' (config.svm_c, seed).
  """
  train_x, test_x = standardize(train_x, test_x)
  if classifier == 'softmax':
    return softmax_scores(fit_softmax(train_x, train_y, num_classes, l2=config.softmax_l2,
                                      steps=config.softmax_steps), test_x)
  if classifier == 'svm':
    model = fit_svm(train_x, train_y, c=config.svm_c, seed=config.seed)
    scores = np.full((len(test_x), num_classes), -np.inf, np.float32)
    decision = model.decision_function(test_x)
    decision = decision if decision.ndim == 2 else np.stack([-decision, decision], 1)
    scores[:, model.classes_] = decision
    return scores
  raise transfer_data.TransferError(f'unknown classifier {classifier!r}; choose from '
                                    f'{CLASSIFIERS}')
