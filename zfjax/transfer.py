"""Transfer learning (Sec. 5.2; Tables 4-7): a trained net's layers as features elsewhere.

    python -m zfjax.transfer --config configs/transfer_digits.py --workdir /tmp/zf_transfer

Three methods, as the paper compares them:
  frozen    layers 1-7 of the trained net stay fixed; their features are computed once
            (cached in the workdir) and a new classifier is trained on them: a softmax
            (multinomial logistic regression, L-BFGS) or a linear SVM (scikit-learn).
            The same machinery probes every layer (Table 7).
  finetune  the whole net, started from the trained weights with a new last layer.
  scratch   the same net and schedule from a random initialization (the paper's baseline).

The protocol (the paper's, after Caltech's standard one): for each of `num_splits` seeded
splits draw `train_per_class` training images per class and test on up to
`test_per_class` of the remaining images of each class (None: all of them); report the
mean per-class accuracy (the mean over classes of each class's accuracy), its mean and
standard deviation over splits. PASCAL VOC is multi-label with fixed splits: a 20-way
softmax on the image's label set, per-class average precision and their mean.

Features, stated as the tables state them: images are preprocessed as the source net's
evaluation (shorter side to its `resize_size`, center square, minus its mean image,
center crop of `image_size`); a conv layer's post-ReLU map is average-pooled to
`pool_grid` x `pool_grid` cells (torch's AdaptiveAvgPool2d) and flattened, a dense
layer's output is used as it is; each feature is standardized with the training split's
mean and standard deviation before the classifier sees it.

Pieces, each usable on its own: `load_source`, `load_dataset`, `extract_features`,
`sample_split`, `fit_softmax`, `fit_svm`, `mean_per_class_accuracy`, `average_precision`,
`train_network` (fine-tuning with optionally frozen layers), `run` (the whole protocol,
writing `transfer.json` in the schema `zfjax.tables` reads).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from zfjax import architecture
from zfjax import input_pipeline
from zfjax import models
from zfjax import training

METHODS = ('frozen', 'finetune', 'scratch')
CLASSIFIERS = ('softmax', 'svm')
IMAGENET_CHANNEL_MEAN = (123.68, 116.78, 103.94)  # 0-255 RGB
VOC = 'voc/2012'


class TransferError(ValueError):
  """A transfer config or source that cannot run, with what to do about it."""


# ----------------------------------------------------------------------------- source


@dataclasses.dataclass(frozen=True)
class Source:
  """A trained net: its module, params, the config that trained it, the mean image its
  inputs have subtracted ((resize_size, resize_size, 3), 0-255 scale) and where it came
  from."""
  model: models.ConvNet
  params: Any
  config: ml_collections.ConfigDict
  mean: np.ndarray
  path: str

  @property
  def image_size(self) -> int:
    return int(self.config.image_size)

  @property
  def resize_size(self) -> int:
    return int(self.config.resize_size)


def last_dense(spec: architecture.Spec) -> str:
  """The name of a spec's output layer (fc8 in every paper model and ablation)."""
  return [layer.name for layer in spec if isinstance(layer, architecture.Dense)][-1]


def load_source(path, step='latest', mean: str = '') -> Source:
  """The trained net in a workdir or checkpoint (as zfjax.ensemble.load_member reads it).
  `mean`: '' = the mean image of the source config's own training set;
  'imagenet_channels' = ImageNet's channel means; or a path to a .npy mean image."""
  from zfjax import ensemble  # pylint: disable=import-outside-toplevel
  try:
    member = ensemble.load_member(path, step)
  except ensemble.EnsembleError as error:
    raise TransferError(str(error)) from None
  return Source(member.model, member.params, member.config,
                source_mean(member.config, mean), str(path))


def source_mean(config, mean: str = '') -> np.ndarray:
  """The (resize_size, resize_size, 3) mean image a source's inputs have subtracted."""
  size = int(config.resize_size)
  if mean == 'imagenet_channels':
    return np.broadcast_to(np.float32(IMAGENET_CHANNEL_MEAN), (size, size, 3)).copy()
  if mean:
    image = np.load(mean).astype(np.float32)
    if image.shape != (size, size, 3):
      raise TransferError(f'mean image {mean} has shape {image.shape}, the source needs '
                          f'{(size, size, 3)}')
    return image
  try:
    return np.asarray(input_pipeline.mean_image(config), np.float32)
  except Exception as error:  # pylint: disable=broad-except  (dataset not on this machine)
    raise TransferError(
        f'the mean image of the source\'s dataset {config.dataset!r} is not available here '
        f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}); set '
        '--config.source_mean=imagenet_channels or to a .npy file of the mean image') from None


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class TransferData:
  """A target dataset, preprocessed for one source net.

  images: (N, H, W, 3) center crops on the 0-255 scale (uint8 for decoded files, float32
    for digits), before mean subtraction; `model_input` subtracts the source's mean.
  labels: (N,) int class indices, or for multi-label data (N, C) 0/1.
  fixed_train: None (sample splits per class), or (N,) bool: the dataset's own training
    examples (the others are the test set), as for PASCAL VOC.
  """
  name: str
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple
  mean: np.ndarray  # (H, W, 3): the source's mean image, center-cropped
  fixed_train: Optional[np.ndarray] = None

  @property
  def multilabel(self) -> bool:
    return self.labels.ndim == 2

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def model_input(self, rows) -> np.ndarray:
    return self.images[rows].astype(np.float32) - self.mean


def _center(image: np.ndarray, size: int) -> np.ndarray:
  return input_pipeline.center_crop_np(image[None], size)[0]


def load_dataset(config, source: Source) -> TransferData:
  """The target dataset of a transfer config, preprocessed as `source` expects:
  'digits' (scikit-learn's, the classes in config.digits_classes), any TFDS image
  classification dataset such as 'caltech101' (its splits pooled, then sampled per class),
  'voc/2012' (multi-label; train_split for training, eval_split for testing), or
  'folder' (class subfolders under config.folder, e.g. Caltech-256's
  256_ObjectCategories)."""
  size, crop = source.resize_size, source.image_size
  mean = _center(source.mean, crop)
  if config.dataset == input_pipeline.DIGITS:
    images, labels = input_pipeline.digits_pool(tuple(config.digits_classes), size)
    crops = input_pipeline.center_crop_np(images, crop)
    names = tuple(str(c) for c in config.digits_classes)
    return TransferData(f'digits{_class_range(config.digits_classes)}', crops, labels, names,
                        mean)
  if config.dataset == 'folder':
    return _load_folder(config, size, crop, mean)
  if config.dataset == VOC:
    return _load_voc(config, size, crop, mean)
  return _load_tfds(config, size, crop, mean)


def _class_range(classes) -> str:
  classes = [int(c) for c in classes]
  contiguous = classes == list(range(classes[0], classes[-1] + 1))
  return f'{classes[0]}-{classes[-1]}' if contiguous else '_'.join(map(str, classes))


def _tfds_images(dataset, size: int, crop: int, label_fn: Callable, count_hint: str):
  """Decoded examples of a tf.data dataset -> (images uint8 (N, crop, crop, 3), labels)."""
  tf, tfds = input_pipeline._tf()  # pylint: disable=protected-access

  def prepare(example):
    image = input_pipeline.decode_image(example['image']) if example['image'].dtype == tf.string \
        else example['image']
    if image.shape.rank == 3 and image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    square = input_pipeline.resize_and_center_crop(image, size)
    view = input_pipeline.center_crop(square, crop)
    return tf.cast(tf.round(view), tf.uint8), label_fn(example)

  images, labels = [], []
  started = time.perf_counter()
  ds = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(256).prefetch(2)
  for batch_images, batch_labels in tfds.as_numpy(ds):
    images.append(batch_images)
    labels.append(batch_labels)
    logging.info('read %d images of %s (%.0f images/s)', sum(map(len, images)), count_hint,
                 sum(map(len, images)) / (time.perf_counter() - started))
  if not images:
    raise TransferError(f'{count_hint} has no images')
  return np.concatenate(images), np.concatenate(labels)


def _builder(config):
  cfg = ml_collections.ConfigDict({'dataset': config.dataset, 'data_dir': config.data_dir})
  return input_pipeline.tfds_builder(cfg)


def _load_tfds(config, size, crop, mean) -> TransferData:
  builder = _builder(config)
  splits = '+'.join(config.pool_splits) if config.pool_splits else None
  splits = splits or '+'.join(builder.info.splits.keys()) or 'train'
  ds = input_pipeline._read(builder, splits)  # pylint: disable=protected-access
  images, labels = _tfds_images(ds, size, crop, lambda ex: ex['label'], config.dataset)
  names = tuple(builder.info.features['label'].names)
  return TransferData(config.dataset.replace('/', ''), images, labels.astype(np.int32), names,
                      mean)


def _load_voc(config, size, crop, mean) -> TransferData:
  tf, _ = input_pipeline._tf()  # pylint: disable=protected-access
  builder = _builder(config)
  names = tuple(builder.info.features['labels'].feature.names)

  def multi_hot(example):
    return tf.reduce_max(tf.one_hot(example['labels'], len(names), dtype=tf.int32), axis=0)

  parts = []
  for split in (config.train_split, config.eval_split):
    ds = input_pipeline._read(builder, split)  # pylint: disable=protected-access
    parts.append(_tfds_images(ds, size, crop, multi_hot, f'{config.dataset} {split}'))
  train, test = parts
  fixed_train = np.concatenate([np.ones(len(train[1]), bool), np.zeros(len(test[1]), bool)])
  return TransferData('voc2012', np.concatenate([train[0], test[0]]),
                      np.concatenate([train[1], test[1]]), names, mean, fixed_train)


def _load_folder(config, size, crop, mean) -> TransferData:
  """Class subfolders of config.folder (read with TFDS's ImageFolder): the folder must be
  a split directory, e.g. .../256_ObjectCategories/001.ak47/*.jpg; classes named in
  config.exclude_classes (Caltech-256's 257.clutter) are left out."""
  _, tfds = input_pipeline._tf()  # pylint: disable=protected-access
  folder = pathlib.Path(config.folder or '').expanduser()
  if not config.folder or not folder.is_dir():
    raise input_pipeline.DatasetUnavailableError(
        f'config.folder {str(folder)!r} is not a directory. For Caltech-256, download '
        '256_ObjectCategories.tar from https://data.caltech.edu/records/nyv15-4j048, extract '
        'it, and set --config.folder=/path/to/256_ObjectCategories (one subfolder per class).')
  # Its constructor would otherwise ask gs://tfds-data for 'image_folder' metadata (TFDS
  # 4.9.6-4.9.7 by default): see input_pipeline.tfds_without_gcs.
  with input_pipeline.tfds_without_gcs():
    builder = tfds.ImageFolder(str(folder.parent))
  names = tuple(builder.info.features['label'].names)
  ds = builder.as_dataset(split=folder.name, shuffle_files=False)
  images, labels = _tfds_images(ds, size, crop, lambda ex: ex['label'], str(folder))
  keep = ~np.isin(np.asarray(names)[labels], list(config.exclude_classes))
  kept_names = tuple(n for n in names if n not in config.exclude_classes)
  relabel = {names.index(n): i for i, n in enumerate(kept_names)}
  labels = np.asarray([relabel[int(l)] for l in labels[keep]], np.int32)
  name = config.dataset_name or folder.name
  return TransferData(name, images[keep], labels, kept_names, mean)


# ----------------------------------------------------------------------------- features


def pooled(x: jax.Array, grid: int) -> jax.Array:
  """A layer's output as one feature vector per image: (N, H, W, C) maps average-pooled
  to grid x grid and flattened in HWC order; (N, F) vectors unchanged."""
  if x.ndim == 4:
    x = models.adaptive_avg_pool(x, min(grid, x.shape[1], x.shape[2]))
  return x.reshape(x.shape[0], -1)


def extract_features(source: Source, data: TransferData, layers: Sequence[str], *,
                     grid: int = 4, batch_size: int = 128) -> dict[str, np.ndarray]:
  """{layer: (N, D) float32 features} of every image of `data`, from one forward pass per
  batch (the last batch padded to the same shape, so one compiled program)."""
  layers = tuple(dict.fromkeys(layers))
  architecture.check_layers(source.model.spec, layers, 'feature layers')

  @jax.jit
  def forward(images):
    outputs = models.activations(source.model, {'params': source.params}, images, layers)
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
  """`compute()`'s features, saved as workdir/features.npz with `key` (source, dataset,
  layers, pooling) in workdir/features.json; reused while the key is the same."""
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
  """Both arrays scaled by the training features' per-dimension mean and std (constant
  dimensions left at zero)."""
  mean = train.mean(axis=0)
  std = train.std(axis=0)
  std = np.where(std > 1e-8, std, 1.0)
  return (train - mean) / std, (test - mean) / std


# ----------------------------------------------------------------------------- splits


def sample_split(labels: np.ndarray, train_per_class: int,
                 test_per_class: Optional[int], seed) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, test rows), sorted and disjoint: `train_per_class` rows of every class
  drawn at random (`seed`: an int or a tuple of ints, as numpy's default_rng), then up to `test_per_class` of each class's remaining rows
  (None or 0: all of them). A class with no row left for testing is an error."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == c))
    if len(rows) <= train_per_class:
      raise TransferError(f'class {c} has {len(rows)} images: too few for '
                          f'{train_per_class} training images and at least one test image')
    train.append(rows[:train_per_class])
    rest = rows[train_per_class:]
    test.append(rest[:test_per_class] if test_per_class else rest)
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ----------------------------------------------------------------------------- metrics


def mean_per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  """The mean over the classes present in `labels` of the fraction of that class's
  examples predicted right (Caltech's measure; equal to accuracy on balanced sets)."""
  classes = np.unique(labels)
  return float(np.mean([np.mean(predictions[labels == c] == c) for c in classes]))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-class average precision of (N, C) scores against (N, C) 0/1 targets
  (scikit-learn's, the area under the precision-recall step curve); NaN for a class
  with no positive example."""
  from sklearn import metrics  # pylint: disable=import-outside-toplevel
  return np.asarray([metrics.average_precision_score(targets[:, c], scores[:, c])
                     if targets[:, c].any() else np.nan for c in range(targets.shape[1])])


# ----------------------------------------------------------------------------- heads


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
  """A softmax classifier {'kernel' (D, C), 'bias' (C,)} minimizing the mean cross-entropy
  plus l2 * |kernel|^2 (a convex problem, solved by `steps` L-BFGS iterations from zero;
  deterministic). `labels`: (N,) class indices, or (N, C) 0/1 label sets, whose target
  distribution is uniform over the image's labels (the paper's softmax on VOC)."""
  labels = np.asarray(labels)
  if labels.ndim == 1:
    targets = jax.nn.one_hot(labels, num_classes)
  else:
    targets = labels / np.maximum(labels.sum(axis=1, keepdims=True), 1)
  params, _ = _fit_softmax(jnp.asarray(features, jnp.float32),
                           jnp.asarray(targets, jnp.float32), num_classes, float(l2), steps)
  return jax.device_get(params)


def softmax_scores(head: dict, features: np.ndarray) -> np.ndarray:
  return np.asarray(features @ head['kernel'] + head['bias'])


def fit_svm(features: np.ndarray, labels: np.ndarray, *, c: float = 1.0, seed: int = 0):
  """A one-vs-rest linear SVM (scikit-learn's LinearSVC, squared hinge loss, penalty C)."""
  from sklearn import svm  # pylint: disable=import-outside-toplevel
  return svm.LinearSVC(C=c, dual='auto', random_state=seed, max_iter=5000).fit(features, labels)


def probe(train_x, train_y, test_x, classifier: str, num_classes: int, config) -> np.ndarray:
  """Scores (N_test, C) of one classifier trained on standardized features."""
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
  raise TransferError(f'unknown classifier {classifier!r}; choose from {CLASSIFIERS}')


# ----------------------------------------------------------------------------- networks


def new_head_params(source: Source, num_classes: int, seed: int, pretrained: bool):
  """(model, params) of the source architecture with a `num_classes`-way last layer:
  every other layer from the source (pretrained) or all from a fresh init (scratch)."""
  model = models.from_config(source.config, num_classes)
  shape = (1, source.image_size, source.image_size, 3)
  params = model.init(jax.random.key(seed), jnp.zeros(shape))['params']
  if pretrained:
    head = last_dense(model.spec)
    params = {name: (value if name == head else source.params[name])
              for name, value in params.items()}
  return model, params


def network_optimizer(learning_rate: float, momentum: float, weight_decay: float,
                      freeze: tuple = ()) -> optax.GradientTransformation:
  """training.create_optimizer's SGD, with the layers in `freeze` held fixed."""
  optimizer = training.create_optimizer(ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay)))
  if not freeze:
    return optimizer
  def labels(tree):
    return {name: jax.tree.map(lambda _, n=name: 'frozen' if n in freeze else 'trained', value)
            for name, value in tree.items()}
  return optax.multi_transform({'trained': optimizer, 'frozen': optax.set_to_zero()}, labels)


@functools.partial(jax.jit, static_argnames=('model', 'hyper'), donate_argnums=(1, 2))
def _network_step(model, params, opt_state, images, labels, key, hyper):
  """One update of train_network; `hyper` = (learning_rate, momentum, weight_decay,
  filter_rms_radius, freeze), static, so one compiled program per model and setting."""
  learning_rate, momentum, weight_decay, radius, freeze = hyper
  optimizer = network_optimizer(learning_rate, momentum, weight_decay, freeze)

  def loss_fn(p):
    logits = model.apply({'params': p}, images, train=True, rngs={'dropout': key})
    return jnp.mean(training.cross_entropy(logits, labels))

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  clipped = training.renormalize_filters(
      {n: v for n, v in params.items() if n not in freeze}, radius)
  return {**params, **clipped}, opt_state, loss


def train_network(model: models.ConvNet, params, images: np.ndarray, labels: np.ndarray, *,
                  steps: int, batch_size: int, learning_rate: float, momentum: float = 0.9,
                  weight_decay: float = 5e-4, filter_rms_radius: float = 0.1, seed: int = 0,
                  freeze: Sequence[str] = ()) -> tuple[Any, np.ndarray]:
  """SGD with momentum and weight decay on (images, labels) in the model's input space,
  dropout on, the paper's filter renormalization after each update (of trained layers);
  minibatches drawn with replacement by (seed, step). Layers named in `freeze` are not
  updated: their params come back bit for bit. Returns (params, loss of each step)."""
  unknown = sorted(set(freeze) - set(params))
  if unknown:
    raise TransferError(f'freeze: unknown layer(s) {unknown}; this model has {sorted(params)}')
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


# ----------------------------------------------------------------------------- protocol


# field: rule, as training.FIELD_RULES.
FIELD_RULES = {
    'test_per_class': (int, lambda v: v >= 0, 'zero (every other image) or positive'),
    'num_splits': (int, lambda v: v >= 1, 'at least 1'),
    'seed': training.ANY_INT,
    'pool_grid': (int, lambda v: v >= 1, 'at least 1'),
    'batch_size': training.POSITIVE_INT,
    'softmax_l2': training.NON_NEGATIVE,
    'softmax_steps': training.POSITIVE_INT,
    'svm_c': training.POSITIVE,
    'network_steps': training.POSITIVE_INT,
    'network_batch_size': training.POSITIVE_INT,
    'finetune_learning_rate': training.POSITIVE,
    'scratch_learning_rate': training.POSITIVE,
    'momentum': training.FRACTION,
    'weight_decay': training.NON_NEGATIVE,
    'filter_rms_radius': training.FIELD_RULES['filter_rms_radius'],
}


def check_config(config, source: Optional[Source] = None) -> None:
  """TransferError naming the field for settings that cannot run, before any work."""
  training.check_fields(config, FIELD_RULES, TransferError)
  for method in config.methods:
    if method not in METHODS:
      raise TransferError(f'methods: unknown method {method!r}; choose from {METHODS}')
  for classifier in tuple(config.probe_classifiers) + (config.head_classifier,):
    if classifier not in CLASSIFIERS:
      raise TransferError(f'unknown classifier {classifier!r}; choose from {CLASSIFIERS}')
  if any(int(n) < 1 for n in config.train_per_class) or not config.train_per_class:
    raise TransferError(f'train_per_class must be positive counts, got '
                        f'{tuple(config.train_per_class)}')
  if source is not None:
    layers = (config.head_layer, *config.probe_layers)
    try:
      architecture.check_layers(source.model.spec, layers, 'head_layer/probe_layers')
    except ValueError as error:
      raise TransferError(str(error)) from None


def _splits(config, data: TransferData, per_class: int, split: int):
  """(train rows, test rows) of split `split` at `per_class` training images per class."""
  if data.fixed_train is not None:
    return np.flatnonzero(data.fixed_train), np.flatnonzero(~data.fixed_train)
  test = config.test_per_class or None
  return sample_split(data.labels, per_class, test, seed=(config.seed, per_class, split))


def _score(data: TransferData, scores: np.ndarray, test: np.ndarray) -> tuple[float, dict]:
  """(mean per-class accuracy, {}) or for multi-label data (mean AP, {class: AP})."""
  if data.multilabel:
    ap = average_precision(scores, data.labels[test])
    return float(np.nanmean(ap)), {n: float(a) for n, a in zip(data.class_names, ap)}
  return mean_per_class_accuracy(np.argmax(scores, axis=1), data.labels[test]), {}


def _row(method, features, classifier, per_class, values, per_class_ap=None) -> dict:
  row = {'method': method, 'features': features, 'classifier': classifier,
         'train_per_class': per_class, 'mean': float(np.mean(values)),
         'std': float(np.std(values)), 'splits': [float(v) for v in values]}
  if per_class_ap:
    means = {k: float(np.mean([d[k] for d in per_class_ap])) for k in per_class_ap[0]}
    row['per_class_ap'] = {k: None if math.isnan(v) else v for k, v in means.items()}
  return row


def _network_rows(config, source: Source, data: TransferData, method: str) -> list[dict]:
  """Fine-tuning or from-scratch training over every split and training-set size."""
  rows = []
  for per_class in _per_class_sizes(config, data):
    values, aps = [], []
    for split in range(_num_splits(config, data)):
      train, test = _splits(config, data, per_class, split)
      model, params = new_head_params(source, data.num_classes, config.seed + split,
                                      pretrained=method == 'finetune')
      if data.multilabel:
        raise TransferError(f'{method} is defined here for single-label datasets; use '
                            'methods=("frozen",) for VOC')
      params, losses = train_network(
          model, params, data.model_input(train), data.labels[train],
          steps=config.network_steps, batch_size=config.network_batch_size,
          learning_rate=config[f'{method}_learning_rate'], momentum=config.momentum,
          weight_decay=config.weight_decay, filter_rms_radius=config.filter_rms_radius,
          seed=config.seed + split)
      if not np.isfinite(losses[-1]):
        logging.warning('%s, %s per class, split %d: the loss diverged (%s); lower '
                        '%s_learning_rate', method, per_class, split, losses[-1], method)
      value, ap = _score(data, network_scores(model, params, data.model_input(test)), test)
      values.append(value)
      aps.append(ap)
      logging.info('%s, %s per class, split %d: %.4f (loss %.3f -> %.3f)', method, per_class,
                   split, value, losses[:10].mean(), losses[-10:].mean())
    rows.append(_row(method, None, 'softmax', per_class, values, aps if aps[0] else None))
  return rows


def _frozen_rows(config, data: TransferData, features: dict) -> list[dict]:
  """The new head on `head_layer` and the probes on every probe layer, over all splits."""
  jobs = [(config.head_layer, config.head_classifier)]
  jobs += [(layer, c) for layer in config.probe_layers for c in config.probe_classifiers
           if (layer, c) not in jobs]
  if data.multilabel:
    jobs = [(layer, c) for layer, c in jobs if c == 'softmax']
  rows = []
  for per_class in _per_class_sizes(config, data):
    for layer, classifier in jobs:
      values, aps = [], []
      for split in range(_num_splits(config, data)):
        train, test = _splits(config, data, per_class, split)
        scores = probe(features[layer][train], data.labels[train], features[layer][test],
                       classifier, data.num_classes, config)
        value, ap = _score(data, scores, test)
        values.append(value)
        aps.append(ap)
      rows.append(_row('frozen', layer, classifier, per_class, values, aps if aps[0] else None))
      logging.info('frozen %s + %s, %s per class: %.4f +- %.4f', layer, classifier, per_class,
                   rows[-1]['mean'], rows[-1]['std'])
  return rows


def _per_class_sizes(config, data: TransferData) -> tuple:
  return (None,) if data.fixed_train is not None else tuple(int(n) for n in config.train_per_class)


def _num_splits(config, data: TransferData) -> int:
  return 1 if data.fixed_train is not None else int(config.num_splits)


def pretrain_source(config, workdir: pathlib.Path) -> pathlib.Path:
  """Trains the source net that config.source_config describes into workdir/source (or
  resumes it there) and returns that workdir."""
  path = workdir / 'source'
  if not (path / 'results.json').is_file():
    logging.info('training the source net into %s', path)
    training.train_and_evaluate(config.source_config, path)
  return path


def run(config: ml_collections.ConfigDict, workdir) -> dict:
  """The whole protocol of a transfer config; writes workdir/transfer.json (the schema
  zfjax.tables reads) and returns it."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  check_config(config)
  if config.source:
    source_path = pathlib.Path(config.source).expanduser()
  elif config.get('source_config') is not None:
    source_path = pretrain_source(config, workdir)
  else:
    raise TransferError('set --config.source to a trained workdir or checkpoint (from '
                        'train.py, or python -m zfjax.interop import ...)')
  source = load_source(source_path, config.source_step, config.source_mean)
  check_config(config, source)
  data = load_dataset(config, source)
  logging.info('%s: %d images, %d classes; source %s', data.name, len(data.labels),
               data.num_classes, source.path)

  rows = []
  if 'frozen' in config.methods:
    layers = tuple(dict.fromkeys((config.head_layer, *config.probe_layers)))
    key = {'source': str(source_path.absolute()), 'step': str(config.source_step),
           'dataset': data.name, 'count': int(len(data.labels)), 'layers': list(layers),
           'pool_grid': int(config.pool_grid), 'mean': config.source_mean}
    features = cached_features(workdir, key, lambda: extract_features(
        source, data, layers, grid=config.pool_grid, batch_size=config.batch_size))
    rows += _frozen_rows(config, data, features)
  for method in ('finetune', 'scratch'):
    if method in config.methods:
      rows += _network_rows(config, source, data, method)

  result = {
      'kind': 'transfer', 'dataset': data.name, 'source': source.path,
      'metric': 'mean_ap' if data.multilabel else 'mean_per_class_accuracy',
      'num_images': int(len(data.labels)), 'num_classes': data.num_classes,
      'protocol': {
          'train_per_class': None if data.fixed_train is not None
                             else [int(n) for n in config.train_per_class],
          'test_per_class': (config.test_per_class or None) if data.fixed_train is None
                            else None,
          'num_splits': _num_splits(config, data), 'seed': int(config.seed), 'crops': 'center',
          'pooling': f'conv maps average-pooled to {config.pool_grid}x{config.pool_grid} '
                     'cells, flattened; features standardized on the training split',
          'network_steps': int(config.network_steps)},
      'rows': rows}
  (workdir / 'transfer.json').write_text(json.dumps(result, indent=2) + '\n')
  logging.info('wrote %s', workdir / 'transfer.json')
  return result


def summary(result: dict) -> str:
  """A plain-text table of a transfer result, for the console."""
  lines = [f'{result["dataset"]} ({result["metric"]}, mean +- std over '
           f'{result["protocol"]["num_splits"]} splits)']
  for row in result['rows']:
    what = row['method'] + (f' {row["features"]} + {row["classifier"]}' if row['features'] else '')
    per_class = row['train_per_class'] or 'all'
    lines.append(f'  {what:<28} {per_class!s:>4} per class  {100 * row["mean"]:5.1f} +- '
                 f'{100 * row["std"]:.1f}')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m zfjax.transfer --config CONFIG.py --workdir DIR`: see the module doc."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from zfjax import cli  # pylint: disable=import-outside-toplevel
  argv = list(argv if argv is not None else sys.argv)
  flag_values = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file('config', None, 'Transfer config file.',
                                                flag_values=flag_values, lock_config=True,
                                                sys_argv=argv)
  workdir = flags.DEFINE_string('workdir', None, 'Output directory.', flag_values=flag_values)
  try:
    flag_values(argv)
    if not config_flag.value or not workdir.value:
      raise flags.Error('--config and --workdir are required')
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    print(f'error: {cli.config_flag_error(error)}', file=sys.stderr)
    return 2
  logging.use_absl_handler()
  logging.get_absl_handler().python_handler.addFilter(cli.quiet_libraries)
  logging.set_verbosity(logging.INFO)
  try:
    result = run(config_flag.value, workdir.value)
  except (TransferError, FileNotFoundError, input_pipeline.DatasetUnavailableError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(summary(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
