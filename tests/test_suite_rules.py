"""The suite's own rules (tests/conftest.py), each shown to fail a run that breaks it.

A skip outside the allowlist, a file left in the current directory, a connection off this
machine; and the tiers: slow tests only with --full, the default tier's light compiles."""

import os
import pathlib
import shutil

import jax
import pytest

pytest_plugins = ['pytester']

CONFTEST = pathlib.Path(__file__).with_name('conftest.py')


@pytest.fixture
def suite(pytester):
  """A pytester folder holding this suite's conftest.py and the given test file."""
  shutil.copy(CONFTEST, pytester.path / 'conftest.py')
  pytester.makeini('[pytest]\nmarkers =\n    slow: full tier\n')

  def run(source, *args):
    pytester.makepyfile(test_case=source)
    return pytester.runpytest_subprocess('-q', '-p', 'no:cacheprovider', *args)
  return run


def test_a_skip_outside_the_allowlist_fails_the_run(suite):
  result = suite('import pytest\n'
                 'def test_a():\n    pytest.skip("torch is missing")\n')
  assert result.ret == 1
  result.stdout.fnmatch_lines(['*rule broken*', '*test_a: *torch is missing*'])


def test_an_allowed_skip_passes_and_the_allowlist_is_printed(suite):
  result = suite('import pytest\n'
                 'def test_a():\n    pytest.skip("needs a GPU")\n')
  assert result.ret == 0
  result.stdout.fnmatch_lines(["allowed skips: 'needs a GPU'*", '*1 skipped*'])


def test_a_file_left_in_the_current_directory_fails_the_run(suite):
  result = suite('def test_a():\n    open("left.txt", "w").write("x")\n')
  assert result.ret == 1
  result.stdout.fnmatch_lines(['*a test left *left.txt in the current directory*'])


def test_connections_off_this_machine_are_refused(suite):
  result = suite('import socket, pytest\n'
                 'def test_a():\n'
                 '    with pytest.raises(OSError, match="tests run offline"):\n'
                 '        socket.create_connection(("192.0.2.1", 443), timeout=1)\n'
                 'def test_loopback_is_fine():\n'
                 '    server = socket.create_server(("127.0.0.1", 0))\n'
                 '    socket.create_connection(server.getsockname(), timeout=5).close()\n'
                 '    server.close()\n')
  assert result.ret == 0
  result.assert_outcomes(passed=2)


def test_slow_tests_run_only_in_the_full_tier(suite):
  source = ('import os, pytest\n'
            '@pytest.mark.slow\n'
            'def test_slow():\n    pass\n'
            'def test_tier():\n'
            '    print("tier", os.environ["ZFJAX_FULL_TESTS"])\n')
  default = suite(source, '-s')
  default.assert_outcomes(passed=1, deselected=1)
  default.stdout.fnmatch_lines(['*tier 0*'])
  full = suite(source, '-s', '--full')
  full.assert_outcomes(passed=2)
  full.stdout.fnmatch_lines(['*tier 1*'])


def test_this_file_compiles_light_in_the_default_tier_only():
  """conftest's compile effort: XLA's lowest optimization level unless --full.

  This file is not marked `optimized`; test_deconv.py, which is, checks the other side."""
  light = os.environ['ZFJAX_FULL_TESTS'] == '0'
  assert jax.config.read('jax_disable_most_optimizations') == light
