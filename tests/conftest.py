"""Fixtures shared by several test files."""

import pytest


@pytest.fixture(scope='session')
def digits_smoke_run(tmp_path_factory):
  """A function seed -> the workdir of a finished configs/digits.py:smoke run with that
  seed (4 steps of a narrow small_zfnet, checkpoints at steps 2 and 4, results.json),
  trained in-process once per seed per test session. Treat the workdir as read-only."""
  from configs import digits  # pylint: disable=import-outside-toplevel
  from zfjax import training  # pylint: disable=import-outside-toplevel
  runs = {}

  def run(seed: int = 0):
    if seed not in runs:
      config = digits.get_config('smoke')
      config.seed = seed
      workdir = tmp_path_factory.mktemp(f'digits_smoke_seed{seed}')
      training.train_and_evaluate(config, workdir)
      runs[seed] = workdir
    return runs[seed]

  return run
