r"""Trains a convnet of the paper and evaluates it.

    zfjax-train --config configs/digits.py --workdir /tmp/zf_digits
    python train.py --config configs/zfnet.py --workdir /tmp/zfnet --config.batch_size=256
    python -m zfjax.train --config configs/zfnet.py --workdir /tmp/zfnet

Multi-host: run the same command on every host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (auto-detected on Cloud TPU and SLURM when absent).
Writes into --workdir: checkpoints/, metrics.jsonl, results.json, config.json and
TensorBoard event files; run again with the same --workdir to resume. results.json holds
the final evaluation: top1_error and top5_error on the eval split (center crop),
ten_crop_top1_error / ten_crop_top5_error (config.ten_crop_eval) and train_top1_error /
train_top5_error (center crop on the training split, config.train_error_eval), as
fractions. SIGTERM saves a checkpoint of the current step and exits 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

from absl import flags
from absl import logging
from ml_collections import config_flags

from zfjax import cli
from zfjax import parallel
from zfjax import train


def define(argv: list) -> flags.FlagValues:
  """The flags of zfjax-train."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.',
                      flag_values=flag_values)
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0, for multi-host runs.', flag_values=flag_values)
  flags.DEFINE_integer('num_processes', None, 'Number of processes.', flag_values=flag_values)
  flags.DEFINE_integer('process_id', None, 'Index of this process.', flag_values=flag_values)
  flags.DEFINE_integer('coordinator_timeout', 300,
                       'Seconds to wait for the coordinator and all processes.',
                       flag_values=flag_values)
  return flag_values


def body(flag_values: flags.FlagValues, args: list) -> int:
  """Joins the processes, trains and evaluates; a preempted run exits 0."""
  if args:
    raise cli.UserError(f'unexpected arguments: {args}')
  parallel.initialize(flag_values.coordinator_address, flag_values.num_processes,
                      flag_values.process_id, timeout_s=flag_values.coordinator_timeout)
  try:
    train.train_and_evaluate(flag_values.config, flag_values.workdir)
  except train.Preempted as preempted:  # a checkpoint of this step is saved
    logging.info('%s', preempted)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """zfjax-train: see the module doc."""
  return cli.run('zfjax-train', __doc__, define, body, argv, required=('config', 'workdir'),
                 user_errors=(parallel.CoordinatorUnreachableError, train.NonFiniteLossError,
                              train.WorkdirBusyError, train.WorkdirWriteError))
