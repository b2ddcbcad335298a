"""The linter's rules (pyproject.toml [tool.ruff]) hold over the whole repository."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
  """ruff: pyflakes, pycodestyle and PEP 257 summary lines (the config says which)."""
  result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'],
                          cwd=ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_reads_our_config():
  """A docstring without its summary line fails under our config (the check is live)."""
  source = 'def f():\n  """A summary\n  that runs on."""\n'
  result = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache',
                           '--stdin-filename', 'zfjax/example.py', '-'], input=source,
                          cwd=ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 1 and 'D205' in result.stdout, result.stdout
