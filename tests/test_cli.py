"""The one command-line style (zfjax.cli), tested on a small program.

Flags, one-line mistakes with status 2, crashes with their traceback, `latest|best|N`,
and the packaged configs from any directory.
"""

import os
import pathlib
import subprocess
import sys

from absl import flags
import pytest

from zfjax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('text, value', [('latest', 'latest'), ('best', 'best'), ('12', 12),
                                         (7, 7)])
def test_parse_step(text, value):
  assert cli.parse_step(text) == value


@pytest.mark.parametrize('text', ['', 'newest', '1.5', '-'])
def test_parse_step_refuses_anything_else(text):
  with pytest.raises(cli.UserError, match="--step must be 'latest', 'best' or a step number"):
    cli.parse_step(text)


def test_packaged_configs_are_found_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  packaged = pathlib.Path(cli.PACKAGED_CONFIGS)
  assert cli.packaged_config('configs/digits.py:smoke') == f'{packaged / "digits.py"}:smoke'
  assert cli.packaged_config('digits') == str(packaged / 'digits.py')
  assert cli.packaged_config('configs/ablations.py:zfnet,smoke').endswith(
      'ablations.py:zfnet,smoke')
  assert cli.packaged_config('configs/nothing.py') == 'configs/nothing.py'  # left to fail
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'digits.py').write_text('')
  assert cli.packaged_config('configs/digits.py') == 'configs/digits.py'  # a local file wins
  assert cli.with_packaged_configs(['p', '--config', 'zfnet', '--config=alexnet']) == [
      'p', '--config', str(packaged / 'zfnet.py'), f'--config={packaged / "alexnet.py"}']


def define(argv):
  del argv
  flag_values = flags.FlagValues()
  flags.DEFINE_integer('count', None, 'How many.', flag_values=flag_values)
  flags.DEFINE_string('what', 'ok', 'What happens.', flag_values=flag_values)
  return flag_values


def body(flag_values, args):
  if flag_values.what == 'mistake':
    raise cli.UserError(f'count {flag_values.count} is wrong\nsecond line')
  if flag_values.what == 'missing':
    raise FileNotFoundError('no such workdir /x')
  if flag_values.what == 'crash':
    raise RuntimeError('a bug')
  print(f'count={flag_values.count} args={args}')
  return 0


def run(argv):
  return cli.run('zfjax-test', 'A test program.', define, body, argv, required=('count',))


def test_a_program_runs_with_its_flags(capsys):
  assert run(['--count', '3', 'extra']) == 0
  assert capsys.readouterr().out == "count=3 args=['extra']\n"


@pytest.mark.parametrize('argv, message', [
    (['--count=x'], 'error: flag --count=x: invalid literal'),
    (['--cuont=3'], 'error: Unknown command line flag'),
    ([], 'error: --count is required (zfjax-test --help lists the flags)'),
    (['--count=1', '--what=mistake'], 'error: count 1 is wrong'),
    (['--count=1', '--what=missing'], 'error: no such workdir /x'),
])
def test_mistakes_exit_2_with_one_line(capsys, argv, message):
  assert run(argv) == 2
  captured = capsys.readouterr()
  assert captured.err.startswith(message) and captured.err.count('\n') == 1, captured.err
  assert captured.out == ''


def test_a_crash_keeps_its_traceback():
  with pytest.raises(RuntimeError, match='a bug'):
    run(['--count=1', '--what=crash'])


def test_help_lists_the_flags(capsys):
  assert run(['--help']) == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: zfjax-test [flags]') and '--count' in out and 'How many.' in out


def test_subcommands(capsys):
  commands = {'go': cli.Command('Goes.', define, body, ('count',))}
  assert cli.run_commands('zfjax-test', 'Doc.', commands, ['go', '--count=2']) == 0
  assert capsys.readouterr().out == 'count=2 args=[]\n'
  assert cli.run_commands('zfjax-test', 'Doc.', commands, ['stop']) == 2
  assert capsys.readouterr().err == "error: unknown command 'stop'; choose one of go\n"
  assert cli.run_commands('zfjax-test', 'Doc.', commands, []) == 2
  assert 'go              Goes.' in capsys.readouterr().out


def module_run(tmp_path, *args):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, '-m', *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_train_runs_from_any_directory_with_the_packaged_config(tmp_path):
  """`python -m zfjax.train` in an empty directory finds the packaged configs/digits.py.

  The config loads, and the mistake in its override is the one line.
  """
  result = module_run(tmp_path, 'zfjax.train', '--config', 'configs/digits.py:smoke',
                      '--workdir', str(tmp_path / 'w'), '--config.batch_size=0')
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
      'error: config.batch_size must be positive, got 0'], result.stderr
  assert not (tmp_path / 'w').exists()
