r"""Trains a convnet of the paper and evaluates it.

    python train.py --config configs/digits.py --workdir /tmp/zf_digits
    python train.py --config configs/zfnet.py --workdir /tmp/zfnet --config.batch_size=256

Multi-host: run the same command on every host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (auto-detected on Cloud TPU and SLURM when absent).
Writes into --workdir: checkpoints/, metrics.jsonl, results.json, config.json and
TensorBoard event files; run again with the same --workdir to resume.
"""

import logging as python_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-host runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def _quiet_libraries(record) -> bool:
  """Keeps Orbax's and JAX's own INFO lines off the console (warnings still show)."""
  chatty = ('/orbax/', '/jax/', '/etils/')
  quiet = any(part in record.pathname for part in chatty)
  return record.levelno >= python_logging.WARNING or not quiet


def _fail(message: str) -> None:
  """A user error: one line on stderr, exit status 1, no traceback."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)


def _without_traceback(message: str) -> str:
  """config_flags puts the config file's traceback into its error: keep the first line
  and the exception's own."""
  if 'Traceback (most recent call last)' not in message:
    return message
  lines = [line for line in message.splitlines() if line.strip()]
  return f'{lines[0]} {lines[-1]}'


def parse_flags(argv):
  """absl's flag parsing, with config overrides that name no field (or have the wrong
  type) reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{_without_traceback(str(e))}\nPass --helpfull to see help on flags.')
  except (AttributeError, KeyError) as e:
    field = str(e.args[0] if e.args else e).strip('"')
    _fail(f'the config has no field {field}; --config.NAME=VALUE sets existing fields only')
  except (TypeError, ValueError) as e:
    _fail(f'bad config: {e}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().python_handler.addFilter(_quiet_libraries)
  config = _CONFIG.value
  try:
    config.get('model')  # config_flags reports a config file that failed to load only here
  except OSError as e:
    _fail(' '.join(line.strip() for line in str(e).splitlines() if line.strip()))
  from zfjax import input_pipeline, parallel, training  # pylint: disable=g-import-not-at-top
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    training.train_and_evaluate(config, _WORKDIR.value)
  except (training.ConfigError, input_pipeline.DatasetUnavailableError,
          training.NonFiniteLossError) as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
