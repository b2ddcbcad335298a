"""End-to-end tests of train.py (zfjax-train): its files, faults, resumes and mistakes.

Files written, resume after SIGKILL and SIGTERM, a refused write, a busy workdir,
multi-process runs, a non-finite loss, and configs that cannot run (each exits 2 with one
line). Each run is a subprocess on the digits smoke config (a narrow small_zfnet, a few
steps).

Tiers. Every train.py subprocess pays the import of JAX and the rest (several seconds on
two cores) before its first step, so the default tier keeps the essential check only:
the uninterrupted reference run (whose files are checked) and a run SIGKILLed after its
first checkpoint that, started again, ends with exactly the reference's losses, parameters
and results (three runs in all); plus the flag checks that fail before JAX loads. Data-
parallel equality (one device against four, on the real-width digits net) is the default
tier's check in test_training.py. The full tier (`--full`; tests marked slow) adds one
test per further behaviour, each one or two more train.py runs: TensorBoard reading the
events (loads TensorBoard's reader), SIGTERM at a late step, a write refused by the OS, a
busy workdir, an unreachable coordinator, two processes against one, resuming on four
devices, a non-finite loss, and the bad configs that are refused only after JAX loads.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from zfjax import checkpoints

REPO = pathlib.Path(__file__).resolve().parents[1]
# The reference run: 12 steps, evaluated and checkpointed every 4.
RUN = ('--config.num_train_steps=12', '--config.eval_every_steps=4',
       '--config.checkpoint_every_steps=4', '--config.log_every_steps=1',
       '--config.keep_checkpoints=3')


def command(workdir, *flags, config='configs/digits.py:smoke'):
  return [sys.executable, 'train.py', f'--config={config}', f'--workdir={workdir}', *flags]


def environment(devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  if devices > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def train(workdir, *flags, devices=1, check=True, config='configs/digits.py:smoke',
          timeout=300):
  proc = subprocess.run(command(workdir, *flags, config=config), cwd=REPO, text=True,
                        capture_output=True, env=environment(devices), timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def losses(workdir):
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in records if 'loss' in r}


def assert_params_close(workdir_a, workdir_b, atol=0.0):
  _, a = checkpoints.restore_params(workdir_a)
  _, b = checkpoints.restore_params(workdir_b)
  for name in a:
    for leaf in a[name]:
      np.testing.assert_allclose(np.asarray(a[name][leaf]), np.asarray(b[name][leaf]),
                                 atol=atol, rtol=0, err_msg=f'{name}/{leaf}')


def saved_steps(workdir):
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def stopped_after(reference, workdir, step):
  """A copy of the reference workdir as a run leaves it when it stops right after `step`.

  The later checkpoints and results.json are gone (metrics.jsonl keeps the later records,
  as after a kill: the resumed run drops them).
  """
  shutil.copytree(reference, workdir)
  for later in saved_steps(workdir):
    if later > step:
      shutil.rmtree(workdir / 'checkpoints' / str(later))
  (workdir / 'results.json').unlink()
  return workdir


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted single-process run that the other runs are compared with."""
  workdir = tmp_path_factory.mktemp('reference')
  train(workdir, *RUN)
  return workdir


def test_writes_metrics_results_config_events_and_checkpoints(reference):
  assert sorted(losses(reference)) == list(range(1, 13))
  records = [json.loads(line) for line in (reference / 'metrics.jsonl').read_text().splitlines()]
  assert {'step', 'loss', 'lr', 'images_per_sec'} <= set(records[0])
  evals = [r for r in records if 'eval_top1_error' in r]
  assert [r['step'] for r in evals] == [4, 8, 12]
  results = json.loads((reference / 'results.json').read_text())
  assert results['step'] == 12 and 0 <= results['top1_error'] <= 1
  assert results['top1_error'] == pytest.approx(evals[-1]['eval_top1_error'])
  # Table 3's train column: center-crop errors on the whole training split.
  assert 0 <= results['train_top5_error'] <= results['train_top1_error'] <= 1
  assert results['train_count'] == 1437  # the whole digits training split
  config = json.loads((reference / 'config.json').read_text())
  assert config['num_train_steps'] == 12 and config['model'] == 'small_zfnet'
  assert list(reference.glob('events.out.tfevents.*'))
  assert saved_steps(reference) == [4, 8, 12]
  restored_config, params = checkpoints.restore_params(reference)
  assert restored_config.num_train_steps == 12
  assert params['conv1']['kernel'].shape == (3, 3, 3, 8)


@pytest.mark.slow
def test_tensorboard_can_read_the_events(reference):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(reference))
  events.Reload()
  assert [s.step for s in events.Scalars('loss')] == list(range(1, 13))


def test_sigkill_then_restart_reproduces_the_uninterrupted_run(reference, tmp_path):
  workdir = tmp_path / 'killed'
  run = subprocess.Popen(command(workdir, *RUN), cwd=REPO, env=environment(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = workdir / 'checkpoints' / '4'
  deadline = time.time() + 240
  while not first.exists() and time.time() < deadline and run.poll() is None:
    time.sleep(0.005)
  run.send_signal(signal.SIGKILL)
  run.wait()
  assert first.exists() and not (workdir / 'results.json').exists(), 'the run was not cut'
  # A save cut midway leaves a temporary directory: resuming must not take it.
  (workdir / 'checkpoints' / '999.orbax-checkpoint-tmp' / 'default').mkdir(parents=True)
  train(workdir, *RUN)
  assert losses(workdir) == losses(reference)
  assert_params_close(workdir, reference)
  assert json.loads((workdir / 'results.json').read_text()) == json.loads(
      (reference / 'results.json').read_text())


@pytest.mark.slow
def test_sigterm_at_a_late_step_saves_it_exits_0_and_resumes_exactly(reference, tmp_path):
  workdir = tmp_path / 'preempted'
  run = subprocess.Popen(command(workdir, *RUN), cwd=REPO, env=environment(), text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  seen = []
  for line in run.stderr:
    seen.append(line)
    # The trainer logs step 8 after deciding whether to stop at step 8, then evaluates
    # and checkpoints step 8 before stepping on: a SIGTERM sent now is taken at step 9
    # (at 10 or 11 if this process is slow to send it), two thirds into the run.
    if re.search(r'\] step 8/12 ', line):
      run.send_signal(signal.SIGTERM)
      break
  _, rest = run.communicate(timeout=240)
  log = ''.join(seen) + rest
  assert run.returncode == 0, log[-4000:]
  found = re.search(r'stopped by SIGTERM at step (\d+): its checkpoint is saved', rest)
  assert found, log[-4000:]
  step = int(found[1])
  assert 9 <= step <= 11, f'SIGTERM was taken at step {step}, not between 9 and 11'
  assert saved_steps(workdir) == [4, 8, step]  # a step that is not a checkpoint step
  assert checkpoints.find_checkpoint(workdir).name == str(step)
  assert not (workdir / 'results.json').exists()
  one = losses(reference)
  assert losses(workdir) == {s: one[s] for s in range(1, step + 1)}
  resumed = train(workdir, *RUN)
  assert f'resumed from the checkpoint of step {step}' in resumed.stderr
  assert losses(workdir) == one
  assert_params_close(workdir, reference)
  assert json.loads((workdir / 'results.json').read_text()) == json.loads(
      (reference / 'results.json').read_text())


def with_file_size_limit(limit, argv):
  """argv run with writes past `limit` bytes failing with EFBIG, as on a full disk.

  Writes fail with EFBIG ('File too large') instead of raising SIGXFSZ: a launcher sets
  both, then execs argv (no preexec_fn, which would fork this multithreaded process).
  """
  launcher = ('import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
              f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); '
              'os.execv(sys.argv[1], sys.argv[1:])')
  return [sys.executable, '-c', launcher, *argv]


@pytest.mark.slow
def test_a_refused_write_stops_in_one_line_and_the_last_checkpoint_resumes(reference, tmp_path):
  workdir = stopped_after(reference, tmp_path / 'full', 8)
  # Files may not grow past 12 kB: the step-12 checkpoint's array files cannot be written
  # (metrics.jsonl, config.json and the event file stay smaller).
  proc = subprocess.run(with_file_size_limit(12_000, command(workdir, *RUN)), cwd=REPO,
                        text=True, capture_output=True, env=environment(), timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]  # the logs, then one line
  last_line = proc.stderr.strip().splitlines()[-1]
  assert last_line == (f'error: cannot write to the workdir {workdir} (File too large): '
                       f'training stopped; the last complete checkpoint, '
                       f'{workdir / "checkpoints" / "8"}, is kept; free space or make it '
                       'writable, then run the same command to resume')
  assert saved_steps(workdir) == [4, 8] and not (workdir / 'results.json').exists()
  train(workdir, *RUN)  # with room again: resumes from step 8, as if never stopped
  assert losses(workdir) == losses(reference)
  assert_params_close(workdir, reference)


def test_write_failures_are_told_apart_from_other_errors():
  refused = ('OUT_OF_RANGE: Error writing "params.fc6.kernel/0.0" in OCDBT database: Failed '
             "to write 1570 bytes to file 12: No space left on device [os_error_code='28']")
  assert checkpoints.write_failure(ValueError(refused)) == 'No space left on device'
  assert checkpoints.write_failure(PermissionError(13, 'denied')) == 'Permission denied'
  assert checkpoints.write_failure(OSError(30, 'ro')) == 'Read-only file system'
  try:
    try:
      raise OSError(28, 'full')
    except OSError as inner:
      raise RuntimeError('save failed') from inner
  except RuntimeError as outer:
    assert checkpoints.write_failure(outer) == 'No space left on device'
  assert checkpoints.write_failure(FileNotFoundError(2, 'gone')) is None
  assert checkpoints.write_failure(ValueError("NOT_FOUND [os_error_code='2']")) is None
  assert checkpoints.write_failure(ValueError('shapes differ')) is None


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_refuses(tmp_path):
  from zfjax.train import faults  # pylint: disable=import-outside-toplevel
  with faults.workdir_lock(tmp_path):
    proc = train(tmp_path, *RUN, check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert f'workdir {tmp_path} is in use by another run (pid {os.getpid()}' in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()
  with faults.workdir_lock(tmp_path):  # free again: the refused run took nothing
    assert (tmp_path / faults.LOCK_FILE).read_text().startswith(f'pid {os.getpid()} on ')


def reserved_port(share: bool) -> socket.socket:
  """A socket bound to a free port and never listening.

  The caller keeps it open while its subprocesses use the port: no other process can bind
  it meanwhile (nor take it as the local port of a connection), so the port cannot be
  taken between choosing it and using it. Connections to it are refused. With `share`, the
  socket is bound with SO_REUSEPORT to the wildcard address, both IPv4 and IPv6 where the
  host has both: a process that also asks for SO_REUSEPORT may bind the same port beside
  it, as the gRPC server of JAX's coordinator (bound to [::]:port) does, gRPC's default
  on Linux.
  """
  if share and socket.has_dualstack_ipv6():
    sock = socket.socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    address = ('::', 0)
  else:
    sock = socket.socket()
    address = ('0.0.0.0' if share else '127.0.0.1', 0)
  if share:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  sock.bind(address)
  return sock


@pytest.mark.slow
def test_an_unreachable_coordinator_fails_in_bounded_time_naming_it(tmp_path):
  with reserved_port(share=False) as nobody:  # bound, not listening: nothing answers there
    address = f'127.0.0.1:{nobody.getsockname()[1]}'
    # Bounded: the trainer gives up after --coordinator_timeout, far inside this timeout.
    proc = train(tmp_path, *RUN, f'--coordinator_address={address}', '--num_processes=2',
                 '--process_id=1', '--coordinator_timeout=5', check=False, timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert f'could not join the coordinator at {address} within 5 s' in proc.stderr


@pytest.mark.slow
def test_two_processes_agree_with_one(reference, tmp_path):
  workdir = tmp_path / 'two'
  with reserved_port(share=True) as port:  # only the coordinator can bind it beside us
    address = f'127.0.0.1:{port.getsockname()[1]}'
    runs = [subprocess.Popen(command(workdir, *RUN, f'--coordinator_address={address}',
                                     '--num_processes=2', f'--process_id={i}',
                                     '--coordinator_timeout=120'),
                             cwd=REPO, env=environment(), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for i in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
  for run, (_, err) in zip(runs, outputs):
    assert run.returncode == 0, err[-4000:]
  two, one = losses(workdir), losses(reference)
  assert sorted(two) == sorted(one)
  np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)],
                             rtol=1e-5)
  assert_params_close(workdir, reference, atol=1e-5)


@pytest.mark.slow
def test_resume_on_four_devices_continues_the_run(reference, tmp_path):
  workdir = stopped_after(reference, tmp_path / 'four', 8)
  train(workdir, *RUN, devices=4)
  resumed, one = losses(workdir), losses(reference)
  np.testing.assert_allclose([resumed[s] for s in range(9, 13)],
                             [one[s] for s in range(9, 13)], rtol=1e-5)
  assert_params_close(workdir, reference, atol=1e-5)


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    reference, tmp_path):
  workdir = tmp_path / 'nan'
  shutil.copytree(reference, workdir)
  proc = train(workdir, '--config.num_train_steps=20', '--config.eval_every_steps=4',
               '--config.checkpoint_every_steps=1', '--config.learning_rate=1e30', check=False)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  found = re.match(r'error: loss is .* at step (\d+): training stopped; the last good '
                   r'checkpoint is step (\d+) in ', last)
  assert found, proc.stderr[-2000:]
  bad_step, good_step = int(found[1]), int(found[2])
  assert 12 <= good_step < bad_step <= 20
  assert 'Traceback' not in proc.stderr
  assert checkpoints.find_checkpoint(workdir).name == str(good_step)
  _, params = checkpoints.restore_params(workdir)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))
  assert_params_close(workdir / 'checkpoints' / '12', reference)


@pytest.mark.parametrize('flags, devices, message', [
    # Refused while the flags are parsed, before JAX loads: well under a second each.
    (('--config.no_such_field=1',), 1, 'no_such_field'),
    (('--config.batch_sise=8',), 1, 'the config has no field \'batch_sise\' (did you mean '
                                    '"batch_size" instead of "batch_sise"?)'),
    # Refused once JAX and the data have loaded: seconds each.
    pytest.param(('--config.batch_size=6',), 4, 'batch_size 6 must be a positive multiple '
                 'of the number of devices (4)', marks=pytest.mark.slow),
    pytest.param(('--config.model=lenet',), 1, "unknown model 'lenet'",
                 marks=pytest.mark.slow),
    pytest.param(('--config.dataset=no_such_dataset',), 1, 'no_such_dataset',
                 marks=pytest.mark.slow),
])
def test_bad_configs_fail_with_one_clear_line(tmp_path, flags, devices, message):
  proc = train(tmp_path, *flags, devices=devices, check=False)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()
