r"""Trains a convnet of the paper and evaluates it.

    python train.py --config configs/digits.py --workdir /tmp/zf_digits
    python train.py --config configs/zfnet.py --workdir /tmp/zfnet --config.batch_size=256

Multi-host: run the same command on every host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (auto-detected on Cloud TPU and SLURM when absent).
Writes into --workdir: checkpoints/, metrics.jsonl, results.json, config.json and
TensorBoard event files; run again with the same --workdir to resume. results.json holds
the final evaluation: top1_error and top5_error on the eval split (center crop),
ten_crop_top1_error / ten_crop_top5_error (config.ten_crop_eval) and train_top1_error /
train_top5_error (center crop on the training split, config.train_error_eval), as
fractions.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from zfjax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-host runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')
_COORDINATOR_TIMEOUT = flags.DEFINE_integer(
    'coordinator_timeout', 300, 'Seconds to wait for the coordinator and all processes.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's flag parsing, with config overrides that name no field (or have the wrong
  type) reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cli.fail(f'{cli.config_flag_error(e)}\nPass --helpfull to see help on flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    cli.fail(cli.config_flag_error(e))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().python_handler.addFilter(cli.quiet_libraries)
  config = _CONFIG.value
  try:
    config.get('model')  # config_flags reports a config file that failed to load only here
  except OSError as e:
    cli.fail(' '.join(line.strip() for line in str(e).splitlines() if line.strip()))
  # pylint: disable-next=g-import-not-at-top
  from zfjax import checkpoints, input_pipeline, parallel, training
  try:
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                        timeout_s=_COORDINATOR_TIMEOUT.value)
  except parallel.CoordinatorUnreachableError as e:
    cli.fail(str(e))
  try:
    training.train_and_evaluate(config, _WORKDIR.value)
  except training.Preempted as e:  # a checkpoint of this step is saved: exit 0
    logging.info('%s', e)
  except (training.ConfigError, input_pipeline.DatasetUnavailableError,
          training.NonFiniteLossError, training.WorkdirBusyError,
          checkpoints.CheckpointError) as e:
    cli.fail(str(e))
  except training.WorkdirWriteError as e:
    cli.fail(str(e), now=True)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
