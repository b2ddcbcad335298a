"""Transfer learning (Sec. 5.2; Tables 4-7): a trained net's layers as features elsewhere.

    zfjax-transfer --config configs/transfer_digits.py --workdir /tmp/zf_transfer
    python -m zfjax.transfer --config configs/transfer_caltech101.py --workdir /data/c101 \
        --config.source=/data/zf
    result = transfer.run(config, workdir)        # from Python: the same, as a dict

Methods: `frozen` (new classifiers on fixed features, `probes`), `finetune` and `scratch`
(the whole net trained, `finetune`). `run` writes workdir/transfer.json in the schema
`zfjax.report.tables` reads. docs/transfer.md gives the protocol and its choices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Optional

from absl import logging
import ml_collections
import numpy as np

from zfjax import architecture
from zfjax import loading
from zfjax import preprocess
from zfjax.train import fields
from zfjax.train import finetune
from zfjax.train import loop
from zfjax.train import probes
from zfjax.train import transfer_data

METHODS = ('frozen', 'finetune', 'scratch')
TransferError = transfer_data.TransferError

# field: rule, as fields.FIELD_RULES.
FIELD_RULES = {
    'test_per_class': (int, lambda v: v >= 0, 'zero (every other image) or positive'),
    'num_splits': (int, lambda v: v >= 1, 'at least 1'),
    'seed': fields.ANY_INT,
    'pool_grid': (int, lambda v: v >= 1, 'at least 1'),
    'batch_size': fields.POSITIVE_INT,
    'softmax_l2': fields.NON_NEGATIVE,
    'softmax_steps': fields.POSITIVE_INT,
    'svm_c': fields.POSITIVE,
    'network_steps': fields.POSITIVE_INT,
    'network_batch_size': fields.POSITIVE_INT,
    'finetune_learning_rate': fields.POSITIVE,
    'scratch_learning_rate': fields.POSITIVE,
    'momentum': fields.FRACTION,
    'weight_decay': fields.NON_NEGATIVE,
    'filter_rms_radius': fields.FIELD_RULES['filter_rms_radius'],
}


def load_source(path, step='latest', source_mean: str = '') -> loading.Loaded:
  """The trained net at `path` (`loading.load`), with the mean image its inputs lose.

  `source_mean` (config.source_mean): '' = the mean image of the source config's own
  training set, TransferError if it is not available here; 'imagenet_channels' =
  ImageNet's channel means; or a .npy file of the mean image. Nets that take
  ImageNet-normalized inputs (imported torchvision or pytorchcv weights) need none.
  """
  if source_mean:
    try:
      return loading.load(path, step, mean=source_mean)
    except ValueError as error:  # a mean image of the wrong shape
      raise TransferError(str(error)) from None
  net = loading.load(path, step, mean='imagenet_channels')  # the net first: its own errors
  if net.normalization != preprocess.PAPER:
    return net
  try:
    image, _, _ = loading.mean_image(net.config, 'dataset')
  except Exception as error:  # pylint: disable=broad-except  (no data here, no TensorFlow)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ''
    raise TransferError(
        f"the mean image of the source's dataset {net.config.dataset!r} is not available here "
        f'({type(error).__name__}: {reason}); set --config.source_mean=imagenet_channels or '
        'to a .npy file of the mean image') from None
  return dataclasses.replace(net, mean=image)


def check_config(config, source: Optional[loading.Loaded] = None) -> None:
  """TransferError naming the field for settings that cannot run, before any work."""
  fields.check_fields(config, FIELD_RULES, TransferError)
  for method in config.methods:
    if method not in METHODS:
      raise TransferError(f'methods: unknown method {method!r}; choose from {METHODS}')
  for classifier in tuple(config.probe_classifiers) + (config.head_classifier,):
    if classifier not in probes.CLASSIFIERS:
      raise TransferError(f'unknown classifier {classifier!r}; choose from '
                          f'{probes.CLASSIFIERS}')
  if any(int(n) < 1 for n in config.train_per_class) or not config.train_per_class:
    raise TransferError(f'train_per_class must be positive counts, got '
                        f'{tuple(config.train_per_class)}')
  if source is not None:
    layers = (config.head_layer, *config.probe_layers)
    try:
      architecture.check_layers(source.model.spec, layers, 'head_layer/probe_layers')
    except ValueError as error:
      raise TransferError(str(error)) from None


# ----------------------------------------------------------------------------- protocol


def _splits(config, data: transfer_data.TransferData, per_class: int, split: int):
  """(train rows, test rows) of split `split` at `per_class` training images per class."""
  if data.fixed_train is not None:
    return np.flatnonzero(data.fixed_train), np.flatnonzero(~data.fixed_train)
  test = config.test_per_class or None
  return transfer_data.sample_split(data.labels, per_class, test,
                                    seed=(config.seed, per_class, split))


def _score(data: transfer_data.TransferData, scores: np.ndarray,
           test: np.ndarray) -> tuple[float, dict]:
  """(mean per-class accuracy, {}) or for multi-label data (mean AP, {class: AP})."""
  if data.multilabel:
    ap = probes.average_precision(scores, data.labels[test])
    return float(np.nanmean(ap)), {n: float(a) for n, a in zip(data.class_names, ap)}
  return probes.mean_per_class_accuracy(np.argmax(scores, axis=1), data.labels[test]), {}


def _row(method, features, classifier, per_class, values, per_class_ap=None) -> dict:
  row = {'method': method, 'features': features, 'classifier': classifier,
         'train_per_class': per_class, 'mean': float(np.mean(values)),
         'std': float(np.std(values)), 'splits': [float(v) for v in values]}
  if per_class_ap:
    means = {k: float(np.mean([d[k] for d in per_class_ap])) for k in per_class_ap[0]}
    row['per_class_ap'] = {k: None if math.isnan(v) else v for k, v in means.items()}
  return row


def _network_rows(config, source: loading.Loaded, data: transfer_data.TransferData,
                  method: str) -> list[dict]:
  """Fine-tuning or from-scratch training over every split and training-set size."""
  rows = []
  for per_class in _per_class_sizes(config, data):
    values, aps = [], []
    for split in range(_num_splits(config, data)):
      train, test = _splits(config, data, per_class, split)
      model, params = finetune.new_head_params(source, data.num_classes, config.seed + split,
                                               pretrained=method == 'finetune')
      if data.multilabel:
        raise TransferError(f'{method} is defined here for single-label datasets; use '
                            'methods=("frozen",) for VOC')
      params, losses = finetune.train_network(
          model, params, data.model_input(train), data.labels[train],
          steps=config.network_steps, batch_size=config.network_batch_size,
          learning_rate=config[f'{method}_learning_rate'], momentum=config.momentum,
          weight_decay=config.weight_decay, filter_rms_radius=config.filter_rms_radius,
          seed=config.seed + split)
      if not np.isfinite(losses[-1]):
        logging.warning('%s, %s per class, split %d: the loss diverged (%s); lower '
                        '%s_learning_rate', method, per_class, split, losses[-1], method)
      scores = finetune.network_scores(model, params, data.model_input(test))
      value, ap = _score(data, scores, test)
      values.append(value)
      aps.append(ap)
      logging.info('%s, %s per class, split %d: %.4f (loss %.3f -> %.3f)', method, per_class,
                   split, value, losses[:10].mean(), losses[-10:].mean())
    rows.append(_row(method, None, 'softmax', per_class, values, aps if aps[0] else None))
  return rows


def _frozen_rows(config, data: transfer_data.TransferData, features: dict) -> list[dict]:
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
        scores = probes.probe(features[layer][train], data.labels[train],
                              features[layer][test], classifier, data.num_classes, config)
        value, ap = _score(data, scores, test)
        values.append(value)
        aps.append(ap)
      rows.append(_row('frozen', layer, classifier, per_class, values, aps if aps[0] else None))
      logging.info('frozen %s + %s, %s per class: %.4f +- %.4f', layer, classifier, per_class,
                   rows[-1]['mean'], rows[-1]['std'])
  return rows


def _per_class_sizes(config, data: transfer_data.TransferData) -> tuple:
  return (None,) if data.fixed_train is not None else tuple(int(n) for n in config.train_per_class)


def _num_splits(config, data: transfer_data.TransferData) -> int:
  return 1 if data.fixed_train is not None else int(config.num_splits)


def pretrain_source(config, workdir: pathlib.Path) -> pathlib.Path:
  """Trains the source net of config.source_config into workdir/source; returns that path.

  A run already there is resumed, or reused once it has finished (results.json).
  """
  path = workdir / 'source'
  if not (path / 'results.json').is_file():
    logging.info('training the source net into %s', path)
    loop.train_and_evaluate(config.source_config, path)
  return path


def _protocol(config, data: transfer_data.TransferData) -> dict:
  """The protocol record of transfer.json."""
  fixed = data.fixed_train is not None
  return {
      'train_per_class': None if fixed else [int(n) for n in config.train_per_class],
      'test_per_class': None if fixed else (config.test_per_class or None),
      'num_splits': _num_splits(config, data), 'seed': int(config.seed), 'crops': 'center',
      'pooling': f'conv maps average-pooled to {config.pool_grid}x{config.pool_grid} '
                 'cells, flattened; features standardized on the training split',
      'network_steps': int(config.network_steps)}


def run(config: ml_collections.ConfigDict, workdir) -> dict:
  """The whole protocol of a transfer config; writes workdir/transfer.json and returns it.

  transfer.json is in the schema zfjax.report.tables reads (docs/transfer.md).
  """
  workdir = pathlib.Path(workdir).absolute()
  check_config(config)
  workdir.mkdir(parents=True, exist_ok=True)
  if config.source:
    source_path = pathlib.Path(config.source).expanduser()
  elif config.get('source_config') is not None:
    source_path = pretrain_source(config, workdir)
  else:
    raise TransferError('set --config.source to a trained workdir or checkpoint (from '
                        'train.py, or python -m zfjax.interop import ...)')
  source = load_source(source_path, config.source_step, config.source_mean)
  check_config(config, source)
  data = transfer_data.load_dataset(config, source)
  logging.info('%s: %d images, %d classes; source %s', data.name, len(data.labels),
               data.num_classes, source_path)

  rows = []
  if 'frozen' in config.methods:
    layers = tuple(dict.fromkeys((config.head_layer, *config.probe_layers)))
    key = {'source': str(source_path.absolute()), 'step': str(config.source_step),
           'dataset': data.name, 'count': int(len(data.labels)), 'layers': list(layers),
           'pool_grid': int(config.pool_grid), 'mean': config.source_mean}
    features = probes.cached_features(workdir, key, lambda: probes.extract_features(
        source, data, layers, grid=config.pool_grid, batch_size=config.batch_size))
    rows += _frozen_rows(config, data, features)
  for method in ('finetune', 'scratch'):
    if method in config.methods:
      rows += _network_rows(config, source, data, method)

  result = {
      'kind': 'transfer', 'dataset': data.name, 'source': str(source_path),
      'metric': 'mean_ap' if data.multilabel else 'mean_per_class_accuracy',
      'num_images': int(len(data.labels)), 'num_classes': data.num_classes,
      'protocol': _protocol(config, data), 'rows': rows}
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
