"""What every zfjax command line shares: absl flags, one-line user errors, quiet logs.

Every program is written one way (`zfjax/cli/<name>.py`)::

    def define(argv: list[str]) -> flags.FlagValues:     # its own flags, absl style
      flag_values = flags.FlagValues()
      config_flags.DEFINE_config_file('config', None, '...', flag_values=flag_values,
                                      sys_argv=argv)
      flags.DEFINE_string('workdir', None, '...', flag_values=flag_values)
      return flag_values

    def body(flag_values, args) -> int | None: ...       # the work

    def main(argv=None) -> int:                          # console script and python -m
      return cli.run('zfjax-NAME', __doc__, define, body, argv, required=('config',))

`run` parses the flags and runs the body. A user's mistake (a bad flag, a missing file, an
unknown layer, an exception of `USER_ERRORS` or the program's own `user_errors`) prints
one line `error: ...` on stderr and returns 2; any other exception is a crash and keeps
its traceback. Programs with subcommands (`zfjax-visualize top9 ...`) use `run_commands`.

`--config` also takes the configs that ship in the package: `configs/digits.py:smoke`
(or just `digits`) names `zfjax/configs/digits.py` when no such file exists here.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import sys
import threading
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from absl import flags
from absl import logging as absl_logging

from zfjax import checkpoints
from zfjax import configs
from zfjax import extras
from zfjax import input_pipeline

USAGE_ERROR = 2  # the exit status of a user's mistake
CHATTY_LIBRARIES = ('/orbax/', '/jax/', '/etils/')
# Orbax's warnings about what zfjax does on purpose: open a checkpoint read-only (how
# every program reads one), save one without metrics (an imported net has none).
ORBAX_NOTES = ('CheckpointManagerOptions.read_only=True', 'Given directory is read only',
               'Requested `tracked_metric`; did not provide metrics')
PACKAGED_CONFIGS = pathlib.Path(configs.__file__).parent


class UserError(Exception):
  """A mistake of the user's: printed as one line, exit status 2."""


# Exceptions that always mean the user asked for something that cannot be done here.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, configs.ConfigError,
               checkpoints.CheckpointError, input_pipeline.DatasetUnavailableError,
               input_pipeline.UnknownDatasetError, extras.MissingExtraError)

Define = Callable[[list], flags.FlagValues]
Body = Callable[[flags.FlagValues, list], Optional[int]]


class Command(NamedTuple):
  """One subcommand of a program: its help line, flags and work (see `run`)."""
  help: str
  define: Define
  body: Body
  required: tuple = ()


# ---------------------------------------------------------------------------- parsing


def parse_step(text: Union[str, int]) -> Union[int, str]:
  """'latest', 'best' or a step number (an int), as every --step flag takes it."""
  if text in ('latest', 'best') or isinstance(text, int):
    return text
  try:
    return int(text)
  except ValueError:
    raise UserError(f"--step must be 'latest', 'best' or a step number, got {text!r}") from None


def packaged_config(value: str) -> str:
  """A --config value naming a packaged config -> its file's path; others unchanged.

  `configs/NAME.py[:ARG]` or `NAME[:ARG]` names `zfjax/configs/NAME.py` when no file of
  that name exists in the current directory, so the README's commands run from any
  directory and from a non-editable install.
  """
  path, colon, arg = value.partition(':')
  if not path or os.path.exists(path):
    return value
  name = pathlib.Path(path).stem if path.endswith('.py') else path
  candidate = PACKAGED_CONFIGS / f'{name}.py'
  if re.fullmatch(r'(configs/)?\w+(\.py)?', path) and candidate.is_file():
    return f'{candidate}{colon}{arg}'
  return value


def with_packaged_configs(argv: Sequence[str]) -> list:
  """argv with every --config value passed through `packaged_config`."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      argv[i] = '--config=' + packaged_config(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(argv):
      argv[i + 1] = packaged_config(argv[i + 1])
  return argv


def spread_lists(argv: Sequence[str], names: Iterable[str]) -> list:
  """argv with `--NAME a b c` spelled `--NAME=a --NAME=b --NAME=c` for each list flag NAME.

  absl's multi-value flags take one value per `--NAME`; this keeps the space-separated
  lists (`--images a.jpg b.jpg`) that argparse's nargs took. The values run to the next
  argument that starts with '-'.
  """
  names, out, current = set(names), [], None
  for arg in argv:
    if arg.startswith('-'):
      name, equals, _ = arg[2:].partition('=')
      current = name if arg.startswith('--') and name in names else None
      if current is None or equals:
        out.append(arg)
    elif current is not None:
      out.append(f'--{current}={arg}')
    else:
      out.append(arg)
  return out


def first_line(error: BaseException) -> str:
  """An exception's message as one line (its type's name when it has none)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def config_flag_error(error: Exception) -> str:
  """One line for an error of parsing flags, --config and --config.FIELD=VALUE.

  A field the config lacks (with config_flags' closest name), a value of the wrong type,
  or a config file that failed to load (its traceback dropped).
  """
  if isinstance(error, (AttributeError, KeyError)):
    while isinstance(error, BaseException) and error.args:  # config_flags nests KeyErrors
      error = error.args[0]
    field, _, hint = str(error).strip('"').partition('\n')
    hint = f' ({hint[0].lower()}{hint[1:].rstrip("?")}?)' if hint else ''
    return f'the config has no field {field}{hint}; --config.NAME=VALUE sets existing fields only'
  message = str(error)
  lines = [line for line in message.splitlines() if line.strip()]
  if 'Traceback (most recent call last)' in message:
    return f'{lines[0]} {lines[-1]}'
  return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------- logging


def quiet_libraries(record: logging.LogRecord) -> bool:
  """A logging filter that keeps library chatter and refused-write tracebacks off.

  Keeps Orbax's, JAX's and etils' INFO lines off the console (their warnings still
  show), and Orbax's and asyncio's tracebacks of a write that the file system refused
  (the program reports it in one line).
  """
  if '/orbax/' in record.pathname or '/asyncio/' in record.pathname:
    logged = [RuntimeError(record.getMessage())] + ([record.exc_info[1]] if record.exc_info
                                                    else [])
    if any(checkpoints.write_failure(error) for error in logged):
      return False
  if '/orbax/' in record.pathname and record.getMessage().startswith(ORBAX_NOTES):
    return False
  if record.exc_info and _is_shutdown_noise(record.exc_info[1]):
    return False
  quiet = any(part in record.pathname for part in CHATTY_LIBRARIES)
  return record.levelno >= logging.WARNING or not quiet


def _is_shutdown_noise(error: Optional[BaseException]) -> bool:
  """A refused write, or asyncio's 'Event loop is closed' from Orbax's writer threads.

  Both follow a write the file system refused; the program reports that in one line.
  """
  return error is not None and (_is_refused_write(error) or (
      isinstance(error, RuntimeError) and 'Event loop is closed' in str(error)))


def _quiet_thread_errors(args: threading.ExceptHookArgs) -> None:
  """threading.excepthook that drops `_is_shutdown_noise`; other errors print as usual."""
  if not _is_shutdown_noise(args.exc_value):
    threading.__excepthook__(args)


def _quiet_errors(kind, value, traceback) -> None:
  """sys.excepthook that drops `_is_shutdown_noise`; other errors print as usual.

  TensorStore's callbacks into asyncio after Orbax closed its loop reach Python's error
  printing (PyErr_Print) through this hook, not through a thread's.
  """
  if not _is_shutdown_noise(value):
    sys.__excepthook__(kind, value, traceback)


def _quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook that drops `_is_shutdown_noise`; others print as usual."""
  if not _is_shutdown_noise(unraisable.exc_value):
    sys.__unraisablehook__(unraisable)


def _log_to_console() -> None:
  """absl's handler at INFO, with `quiet_libraries` on it and on asyncio's logger."""
  if not flags.FLAGS.is_parsed():  # each program parses its own FlagValues: absl's global
    flags.FLAGS.mark_as_parsed()   # ones stay at their defaults (no "before flag parsing")
  absl_logging.use_absl_handler()
  absl_logging.set_verbosity(absl_logging.INFO)
  handler = absl_logging.get_absl_handler().python_handler
  if quiet_libraries not in handler.filters:
    handler.addFilter(quiet_libraries)
  asyncio_logger = logging.getLogger('asyncio')
  if quiet_libraries not in asyncio_logger.filters:
    asyncio_logger.addFilter(quiet_libraries)
  threading.excepthook = _quiet_thread_errors
  sys.excepthook = _quiet_errors
  sys.unraisablehook = _quiet_unraisable


# -------------------------------------------------------------------------------- run


def _mistake(message: str, *, now: bool = False) -> int:
  """Prints `error: message` on stderr; returns 2, or exits at once when `now`.

  `now` (after a refused write): leave without the interpreter's shutdown, where Orbax's
  failed background writes would print their tracebacks under the one line.
  """
  if not now:
    print(f'error: {message}', file=sys.stderr, flush=True)
    return USAGE_ERROR
  sys.stdout.flush()
  sys.stderr.flush()
  os.write(2, f'error: {message}\n'.encode())  # one write: no thread's output cuts into it
  os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # and none follows it
  os._exit(USAGE_ERROR)  # pylint: disable=protected-access


def _is_refused_write(error: BaseException) -> bool:
  return isinstance(error, checkpoints.CheckpointWriteError) or bool(
      isinstance(error, OSError) and checkpoints.write_failure(error))


def _help(program: str, doc: str, flag_values: flags.FlagValues) -> str:
  text = flag_values.get_help(include_special_flags=False).rstrip()
  return f'usage: {program} [flags]\n\n{doc.strip()}\n\nflags:\n{text}\n'


def run(program: str, doc: str, define: Define, body: Body,
        argv: Optional[Sequence[str]] = None, *, required: Iterable[str] = (),
        user_errors: tuple = ()) -> int:
  """Parses `argv` (default sys.argv[1:]) with `define`'s flags and runs `body`.

  Returns the exit status: the body's (None is 0), or 2 after one line on stderr for a
  bad flag, a missing required flag, a config that does not load, or an exception of
  `USER_ERRORS` + `user_errors` from the body. Other exceptions propagate.
  """
  argv = with_packaged_configs([program, *(sys.argv[1:] if argv is None else argv)])
  try:
    flag_values = define(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    return _mistake(config_flag_error(error))
  if any(arg in ('-h', '--help', '--helpfull') for arg in argv[1:]):
    print(_help(program, doc, flag_values), end='')
    return 0
  try:
    rest = flag_values(argv)
    for name in required:
      if flag_values[name].value is None:
        raise flags.Error(f'--{name} is required ({program} --help lists the flags)')
    for flag in flag_values:  # config_flags reports a file that failed to load only here
      value = flag_values[flag].value
      if hasattr(value, 'to_dict'):
        value.get('model')
  except OSError as error:
    return _mistake(' '.join(line.strip() for line in str(error).splitlines() if line.strip()))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    return _mistake(config_flag_error(error))
  _log_to_console()
  try:
    status = body(flag_values, rest[1:])
  except USER_ERRORS + tuple(user_errors) as error:
    return _mistake(first_line(error), now=_is_refused_write(error))
  except OSError as error:
    if _is_refused_write(error):
      return _mistake(first_line(error), now=True)
    raise
  return int(status or 0)


def run_commands(program: str, doc: str, commands: Mapping[str, Command],
                 argv: Optional[Sequence[str]] = None, *, user_errors: tuple = ()) -> int:
  """`program COMMAND [flags]`: runs `commands[COMMAND]` as `run` does."""
  argv = list(sys.argv[1:] if argv is None else argv)
  listing = '\n'.join(f'  {name:<16}{command.help}' for name, command in commands.items())
  if not argv or argv[0] in ('-h', '--help', '--helpfull'):
    print(f'usage: {program} COMMAND [flags]\n\n{doc.strip()}\n\ncommands:\n{listing}\n'
          f'\n{program} COMMAND --help lists its flags.')
    return 0 if argv else USAGE_ERROR
  name, rest = argv[0], argv[1:]
  if name not in commands:
    return _mistake(f'unknown command {name!r}; choose one of {", ".join(commands)}')
  command = commands[name]
  return run(f'{program} {name}', command.help, command.define, command.body, rest,
             required=command.required, user_errors=user_errors)
