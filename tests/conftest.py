"""The suite's rules and shared fixtures.

Two tiers: the default run (`python -m pytest -q -n 2`, under 5 minutes on 2 cores) and
the full one (`python -m pytest -q -n 2 --full`): every test, the `slow` ones included, and
hypothesis exploring at random with more examples. CI runs both (README, .ci/run).

Rules every run keeps:
- nothing is skipped, except a skip whose reason is in ALLOWED_SKIPS (printed at the end);
  any other skip fails the run;
- no test connects anywhere but this machine (in-process connections are refused here;
  CI also runs the suite in a network namespace with only loopback);
- no test leaves a file in the current directory;
- subprocesses share one JAX compilation cache, new for each run.

Compile effort. Most of the default tier's programs are small and take longer to compile
than to run: on a 2-core Zen 1 host, XLA's compiles were 308 s of its 658 s of test time.
So the default tier compiles in-process with JAX's `jax_disable_most_optimizations` (XLA's
lowest optimization level), 20% less test time. Files marked `optimized` compile as users
do: the deconvnet against its gradient form and PyTorch, whose full-size transposed
convolutions run far slower unoptimized (one such test took 22 s instead of 0.3). So does
the whole full tier, and so do subprocesses (train.py runs).

Scheduling: FILE_SECONDS and SHARED_PROGRAMS below.
"""

import ipaddress
import os
import pathlib
import shutil
import socket
import sys
import tempfile

import hypothesis
import pytest

# Skips that may happen, by a phrase of their reason: only checks that need hardware this
# machine lacks. Any other skip fails the run.
ALLOWED_SKIPS = {
    'needs a GPU': 'GPU-only checks; run them on a machine with one',
}


def pytest_addoption(parser):
  parser.addoption('--full', action='store_true',
                   help='the full tier: the slow tests too, hypothesis at random with more '
                        'examples')


def pytest_configure(config):
  os.environ['ZFJAX_FULL_TESTS'] = '1' if config.getoption('--full') else '0'
  # One compilation cache for this run's subprocesses (train.py runs compile the same
  # programs); new each run, so a run never reads an older build's programs.
  # (pytest-xdist workers inherit the controller's.)
  if not os.environ.get('PYTEST_XDIST_WORKER'):
    config.stash[_CACHE] = tempfile.mkdtemp(prefix='zfjax-test-jax-cache-')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = config.stash[_CACHE]
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.2'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  config.stash[_CWD] = (pathlib.Path.cwd(), set(os.listdir()))
  # Hypothesis keeps no example database, and its other files (./.hypothesis by default)
  # go to a folder of this run's.
  hypothesis.settings.register_profile('zfjax', database=None)
  hypothesis.settings.load_profile('zfjax')
  config.stash[_HYPOTHESIS_HOME] = tempfile.mkdtemp(prefix='zfjax-test-hypothesis-')
  hypothesis.configuration.set_hypothesis_home_dir(config.stash[_HYPOTHESIS_HOME])
  _refuse_remote_connections()


# Seconds of each file's default-tier tests (2-core Zen 1 host, 2026-12-07). pytest-xdist
# (--dist loadfile --no-loadscope-reorder, pyproject.toml) hands out files in collection
# order, so the longest are collected first (a file not listed, last): the two workers then
# finish within a short file of each other. (xdist's own order, most tests first, left the
# long files with few tests to the end.) Only the order depends on these figures.
FILE_SECONDS = {
    'test_topk.py': 57, 'test_training.py': 51, 'test_microscope.py': 46,
    'test_train_cli.py': 44, 'test_interop.py': 38, 'test_occlusion.py': 37,
    'test_input_pipeline.py': 36, 'test_deconv.py': 34, 'test_deconv_torch.py': 34,
    'test_transfer.py': 23, 'test_install.py': 21, 'test_invariance.py': 21,
    'test_visualize.py': 15, 'test_fast_ops.py': 14, 'test_suite_rules.py': 13,
    'test_correspondence.py': 13, 'test_train_imagenet_mock.py': 12, 'test_reference.py': 12,
    'test_models.py': 12, 'test_loading.py': 8, 'test_notebook.py': 7,
    'test_architecture.py': 5, 'test_hardening_checkpoints.py': 5, 'test_cli.py': 4,
    'test_tables.py': 4, 'test_ensemble.py': 3, 'test_properties.py': 3,
}
# Files that compile the same programs (one network, its weights and images): one worker
# runs them all, so each program compiles once (measured: 80 s apart, 68 s together).
SHARED_PROGRAMS = {'test_deconv_torch.py': 'test_deconv.py', 'test_occlusion.py': 'test_deconv.py'}


def _unit(name: str) -> str:
  """The work unit (a file name) that a test file's tests go to a worker with."""
  return SHARED_PROGRAMS.get(name, name)


def _unit_seconds(name: str) -> int:
  return sum(seconds for other, seconds in FILE_SECONDS.items() if _unit(other) == _unit(name))


def pytest_xdist_make_scheduler(config, log):
  """--dist loadfile, the files of a SHARED_PROGRAMS group as one unit of work."""
  if config.getoption('dist') != 'loadfile':
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=import-outside-toplevel

  class SharedProgramsScheduling(LoadFileScheduling):

    def _split_scope(self, nodeid):
      directory, _, name = nodeid.partition('::')[0].rpartition('/')
      return f'{directory}/{_unit(name)}'

  return SharedProgramsScheduling(config, log)


def pytest_collection_modifyitems(config, items):
  """The longest units of work first (FILE_SECONDS); without --full (and -m), no slow tests."""
  # The longest units first, a unit's files together; stable: each file's order kept.
  items.sort(key=lambda item: (-_unit_seconds(item.path.name), _unit(item.path.name)))
  if config.getoption('--full') or config.getoption('-m'):
    return
  slow = [item for item in items if item.get_closest_marker('slow')]
  if slow:
    config.hook.pytest_deselected(items=slow)
    items[:] = [item for item in items if not item.get_closest_marker('slow')]


def pytest_runtest_logreport(report):
  if report.skipped and not hasattr(report, 'wasxfail'):
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if not any(phrase in reason for phrase in ALLOWED_SKIPS):
      _PENDING.append(f'{report.nodeid}: {reason}')


def pytest_unconfigure(config):
  for key in (_CACHE, _HYPOTHESIS_HOME):
    if key in config.stash:
      shutil.rmtree(config.stash[key], ignore_errors=True)


_CACHE = pytest.StashKey()
_HYPOTHESIS_HOME = pytest.StashKey()
_CWD = pytest.StashKey()
_PROBLEMS = pytest.StashKey()
_PENDING = []  # skips outside the allowlist, collected as reports arrive


def pytest_sessionfinish(session):
  problems = list(_PENDING)
  cwd, before = session.config.stash[_CWD]
  if cwd.exists():
    left = set(os.listdir(cwd)) - before - {'.pytest_cache', '__pycache__'}
    problems += [f'a test left {cwd / name} in the current directory' for name in sorted(left)]
  session.config.stash[_PROBLEMS] = problems
  if problems and session.exitstatus == 0:
    session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, config):
  allowed = '; '.join(f'{phrase!r} ({why})' for phrase, why in ALLOWED_SKIPS.items())
  terminalreporter.write_line(f'allowed skips: {allowed}')
  problems = config.stash.get(_PROBLEMS, [])
  if problems:
    terminalreporter.section('rule broken', red=True)
    for line in problems:
      terminalreporter.write_line(line, red=True)


def _is_local(address) -> bool:
  host = address[0] if isinstance(address, tuple) else address
  if isinstance(host, bytes):
    host = host.decode()
  if not isinstance(host, str) or host in ('localhost', ''):
    return True
  try:
    return ipaddress.ip_address(host.split('%')[0]).is_loopback
  except ValueError:  # a host name: only names of this machine resolve offline
    return host == socket.gethostname()


def _refuse_remote_connections():
  """Connections from the test process to anything but loopback (or a Unix socket) raise.

  So a test that reaches for the network fails here, not only on a machine without one.
  """
  connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

  def check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
      raise OSError(f'a test tried to connect to {address}: tests run offline')

  def guarded_connect(sock, address):
    check(sock, address)
    return connect(sock, address)

  def guarded_connect_ex(sock, address):
    check(sock, address)
    return connect_ex(sock, address)

  socket.socket.connect = guarded_connect
  socket.socket.connect_ex = guarded_connect_ex


@pytest.fixture(scope='module', autouse=True)
def compile_effort(request):
  """XLA's lowest optimization level in the default tier, except in `optimized` files.

  Only where the file has imported JAX (a file that does not compiles nothing, and
  importing JAX would cost the suite's own pytester runs seconds each)."""
  jax = sys.modules.get('jax')
  if jax is not None:
    light = not (request.config.getoption('--full')
                 or request.node.get_closest_marker('optimized'))
    jax.config.update('jax_disable_most_optimizations', light)


@pytest.fixture(scope='session')
def digits_smoke_run(tmp_path_factory):
  """A function seed -> the workdir of a finished configs/digits.py:smoke run with that seed.

  4 steps of a narrow small_zfnet, checkpoints at steps 2 and 4, results.json; trained
  in-process once per seed per test run: pytest-xdist's workers share it (the first to
  need it trains it under a file lock, the others wait for it). Treat it as read-only.
  """
  import filelock  # pylint: disable=import-outside-toplevel
  from zfjax.configs import digits  # pylint: disable=import-outside-toplevel
  from zfjax import train  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the run's, above each worker's own
  runs = {}

  def run(seed: int = 0):
    if seed not in runs:
      workdir, done = root / f'digits_smoke_seed{seed}', root / f'digits_smoke_seed{seed}.done'
      with filelock.FileLock(root / f'digits_smoke_seed{seed}.lock'):
        if not done.exists():
          shutil.rmtree(workdir, ignore_errors=True)  # a run that failed part-way
          workdir.mkdir()
          config = digits.get_config('smoke')
          config.seed = seed
          train.train_and_evaluate(config, workdir)
          done.touch()
      runs[seed] = workdir
    return runs[seed]

  return run
