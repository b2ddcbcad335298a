"""A kill-and-resume soak: 20 random SIGKILLs, then the uninterrupted run's exact state.

A digits smoke run SIGKILLed 20 times at random moments, restarted each time with the same
command, ends with exactly the losses and parameters of a run never killed.

Tiers: full tier only (`--full`, or `-m slow`): 2,000 steps and 21 starts of train.py take
minutes. The default tier's kill-and-resume check is test_train_cli.py's single SIGKILL.
"""

import json
import subprocess
import time

import numpy as np
import pytest

STEPS = ('--config.num_train_steps=2000', '--config.eval_every_steps=500',
         '--config.checkpoint_every_steps=10', '--config.log_every_steps=10',
         '--config.keep_checkpoints=2')
KILLS = 20
# A start is killed by the time it has logged this many records (10 steps each), however
# fast the host: 20 starts then cover at most about 1,000 of the 2,000 steps, so the run
# cannot finish before the 20th kill (on a fast host, timed kills alone let it finish
# after 16).
MOST_RECORDS_A_START = 5


def records(workdir) -> int:
  """Whole lines in metrics.jsonl (a line being written does not count)."""
  path = workdir / 'metrics.jsonl'
  return path.read_text().count('\n') if path.exists() else 0


def wait(run, workdir, seconds: float, records_at_most: int) -> None:
  """Sleep up to `seconds`, less once `records_at_most` are logged or the run ended."""
  deadline = time.time() + seconds
  while time.time() < deadline and records(workdir) < records_at_most and run.poll() is None:
    time.sleep(0.02)


@pytest.mark.slow
def test_twenty_random_sigkills_then_the_same_final_state(tmp_path):
  # Imported here: the default tier collects this module only to deselect the test, and
  # test_train_cli imports JAX and Orbax.
  from test_train_cli import (  # pylint: disable=import-outside-toplevel
      REPO, assert_params_close, command, environment, losses, train)
  reference = tmp_path / 'reference'
  train(reference, *STEPS)
  workdir = tmp_path / 'soak'
  rng = np.random.default_rng(0)
  kills, incomplete, resumed_from = 0, 0, []
  while kills < KILLS and not (workdir / 'results.json').exists():
    run = subprocess.Popen(command(workdir, *STEPS), cwd=REPO, env=environment(), text=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    logged = records(workdir)
    for line in run.stderr:  # logged once the model is built, just before the loop
      if 'small_zfnet on digits' in line:
        break
    if kills % 2:  # every other kill once steps are being logged: stepping or saving
      wait(run, workdir, 120, logged + 1)
      wait(run, workdir, rng.uniform(0.0, 1.5), logged + MOST_RECORDS_A_START)
    else:  # the others at any moment from here: compiling, first steps, first saves
      wait(run, workdir, rng.uniform(0.0, 4.0), logged + MOST_RECORDS_A_START)
    if run.poll() is None:
      run.kill()
      kills += 1
    run.wait()
    checkpoints = workdir / 'checkpoints'
    if checkpoints.is_dir():
      incomplete += sum(1 for p in checkpoints.iterdir() if 'orbax-checkpoint-tmp' in p.name)
      steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]
      resumed_from.append(max(steps, default=0))
  train(workdir, *STEPS)  # the last start runs to the end
  report = {'kills': kills, 'incomplete_checkpoints_left_and_skipped': incomplete,
            'latest_step_after_each_kill': resumed_from}
  print(json.dumps(report))
  (tmp_path / 'soak.json').write_text(json.dumps(report))
  assert kills == KILLS, report  # the run must not have finished before 20 kills
  assert losses(workdir) == losses(reference)
  assert_params_close(workdir, reference)
  assert json.loads((workdir / 'results.json').read_text()) == json.loads(
      (reference / 'results.json').read_text())
