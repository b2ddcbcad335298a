"""A training config checked before any work, and the step counts it implies.

    fields.check_config(config, mesh)        # configs.ConfigError naming the field
    fields.check_fields(config, RULES, MyError)   # any config, any rules
    num_steps = fields.total_steps(config, input_pipeline.dataset_info(config))

A rule is (int or float, test, what the value must be); `FIELD_RULES` holds the trainer's,
and `zfjax.train.transfer.FIELD_RULES` reuses the same rules for its own fields.
"""

from __future__ import annotations

import math
from typing import Iterable

from zfjax import architecture
from zfjax import configs
from zfjax import input_pipeline
from zfjax import models
from zfjax import parallel

POSITIVE_INT = (int, lambda v: v > 0, 'positive')
POSITIVE = (float, lambda v: v > 0, 'positive')
NON_NEGATIVE_INT = (int, lambda v: v >= 0, 'zero or positive')
NON_NEGATIVE = (float, lambda v: v >= 0, 'zero or positive')
FRACTION = (float, lambda v: 0 <= v < 1, 'in [0, 1)')
ANY_INT = (int, lambda v: True, 'an integer')

# field: rule; check_fields skips the fields a config does not have.
FIELD_RULES = {
    'image_size': POSITIVE_INT,
    'resize_size': POSITIVE_INT,
    'shuffle_buffer': POSITIVE_INT,
    'mean_image_examples': (int, lambda v: v >= 0, 'zero (every image) or positive'),
    'num_train_examples': (int, lambda v: v >= 0, 'zero (from the dataset) or positive'),
    'num_eval_examples': (int, lambda v: v >= 0, 'zero (from the dataset) or positive'),
    'dropout': FRACTION,
    'batch_size': POSITIVE_INT,
    'eval_batch_size': POSITIVE_INT,
    'num_epochs': NON_NEGATIVE,
    'num_train_steps': (int, lambda v: v > 0 or v == -1, 'positive, or -1 to train num_epochs'),
    'learning_rate': POSITIVE,
    'momentum': FRACTION,
    'weight_decay': NON_NEGATIVE,
    'filter_rms_radius': (float, lambda v: v >= 0, 'zero (off) or positive'),
    'lr_patience': NON_NEGATIVE_INT,
    'lr_decay_factor': (float, lambda v: v > 1, 'above 1'),
    'seed': ANY_INT,
    'log_every_steps': POSITIVE_INT,
    'eval_every_steps': POSITIVE_INT,
    'checkpoint_every_steps': POSITIVE_INT,
    'keep_checkpoints': POSITIVE_INT,
}


def check_fields(config, rules=None, error=None) -> None:
  """Raises `error` naming the first field whose value has the wrong type or range.

  `rules`: {field: rule}, default FIELD_RULES; `error`: default configs.ConfigError.
  Fields the config lacks are skipped.
  """
  rules = FIELD_RULES if rules is None else rules
  error = error or configs.ConfigError
  for field, (kind, test, must_be) in rules.items():
    if field not in config:
      continue
    value = config[field]
    numeric = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, numeric):
      raise error(f'config.{field} must be {"a number" if kind is float else "an integer"}'
                  f', got {value!r}')
    if not test(value):
      raise error(f'config.{field} must be {must_be}, got {value!r}')


def check_config(config, mesh) -> None:
  """configs.ConfigError naming the field for settings that cannot run here, before any work.

  A value of the wrong type or range, an unknown model, init or dtype, layer widths the
  model cannot take, a batch size that does not split over the devices.
  """
  check_fields(config)
  if config.image_size > config.resize_size:
    raise configs.ConfigError(f'config.image_size ({config.image_size}) must not exceed '
                              f'config.resize_size ({config.resize_size}): crops come from '
                              'the resized image')
  if config.model not in architecture.SPECS:
    raise configs.ConfigError(f'unknown model {config.model!r} (config.model); choose one of '
                              f'{sorted(architecture.SPECS)}')
  models.from_config(config, num_classes=2)  # widths and removed layers; builds nothing
  for field in ('batch_size', 'eval_batch_size'):
    try:
      parallel.check_batch_size(config[field], mesh, field)
    except ValueError as e:
      raise configs.ConfigError(str(e)) from None
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise configs.ConfigError('set num_epochs > 0 or num_train_steps > 0')


def steps_per_epoch(config, info: input_pipeline.DatasetInfo) -> float:
  """Steps of config.batch_size images in one pass over the training split."""
  return info.num_train / config.batch_size


def total_steps(config, info: input_pipeline.DatasetInfo) -> int:
  """num_train_steps if positive, else num_epochs passes over the training split."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return max(1, math.ceil(config.num_epochs * steps_per_epoch(config, info)))


def epoch_steps(config, info: input_pipeline.DatasetInfo, epochs: Iterable[int]) -> tuple:
  """The steps that end the given epochs (checkpoints kept for the paper's Fig. 4)."""
  return tuple(sorted({max(1, round(e * steps_per_epoch(config, info))) for e in epochs}))
