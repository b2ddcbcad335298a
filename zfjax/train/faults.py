"""What stops a training run, and how a run keeps its workdir to itself.

    with faults.workdir_lock(workdir), faults.StopSignal() as stop:
      ...
      if stop.stop_at(manager, step): save the step, then raise faults.Preempted(step, path)

The errors say what happened and what to do; zfjax-train prints each as one line.
docs/training.md ("Faults") gives the whole behaviour.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import signal
import socket
import threading
import time

import jax

LOCK_FILE = '.lock'


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the last good checkpoint is kept."""


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir's lock: two runs would interleave checkpoints."""


class WorkdirWriteError(OSError):
  """The workdir refused a write (disk full, read-only, no permission): training stopped.

  The complete checkpoints written before it still restore.
  """


class Preempted(Exception):
  """SIGTERM stopped training after a checkpoint of `step` was saved and finished.

  SIGTERM is a preemption notice on TPU and SLURM, or `kill`; the same command resumes
  from the saved step.
  """

  def __init__(self, step: int, directory):
    super().__init__(f'stopped by SIGTERM at step {step}: its checkpoint is saved in '
                     f'{directory}; run the same command to resume')
    self.step = step


@contextlib.contextmanager
def workdir_lock(workdir: pathlib.Path, enabled: bool = True):
  """Holds an exclusive lock on workdir/.lock while training.

  Process 0 only takes it, so the processes of one multi-host run do not lock each other
  out. A second run on the same workdir fails at once with WorkdirBusyError instead of
  interleaving checkpoints. The lock is the kernel's (flock): it goes with the process,
  even on SIGKILL.
  """
  if not enabled:
    yield
    return
  path = workdir / LOCK_FILE
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      raise WorkdirBusyError(f'workdir {workdir} is in use by another run ({holder}); wait '
                             'for it to finish, stop it, or use another --workdir') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}, since '
            f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class StopSignal:
  """Remembers a SIGTERM instead of dying of it, while installed (main thread only).

  With several processes the decision is JAX's preemption sync point (Orbax's
  `reached_preemption`), so that every process saves the same step.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def stop_at(self, manager, step: int) -> bool:
    """Whether to save `step` and stop: SIGTERM came (or, multi-host, JAX says so)."""
    if jax.process_count() > 1:
      return bool(manager.reached_preemption(step))
    return self.received
