"""What the command-line programs share: quiet library logs, one-line user errors."""

import logging
import os
import sys

CHATTY_LIBRARIES = ('/orbax/', '/jax/', '/etils/')


def quiet_libraries(record: logging.LogRecord) -> bool:
  """A logging filter: keeps Orbax's, JAX's and etils' INFO lines off the console
  (their warnings still show), and Orbax's and asyncio's tracebacks of a write that the
  file system refused (train.py reports it in one line)."""
  if '/orbax/' in record.pathname or '/asyncio/' in record.pathname:
    from zfjax import checkpoints  # pylint: disable=import-outside-toplevel
    logged = [RuntimeError(record.getMessage())] + ([record.exc_info[1]] if record.exc_info
                                                    else [])
    if any(checkpoints.write_failure(error) for error in logged):
      return False
  quiet = any(part in record.pathname for part in CHATTY_LIBRARIES)
  return record.levelno >= logging.WARNING or not quiet


def fail(message: str, status: int = 1, *, now: bool = False) -> None:
  """A user error: one line on stderr, exit `status`, no traceback. `now`: exit at once,
  without the interpreter's shutdown (after a refused write, Orbax's failed background
  writes would print their tracebacks while Python shuts down)."""
  print(f'error: {message}', file=sys.stderr)
  if now:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)


def config_flag_error(error: Exception) -> str:
  """One line for an error of parsing --config and --config.FIELD=VALUE flags: a field
  the config lacks (with config_flags' closest name), a value of the wrong type, or a
  config file that failed to load (its traceback dropped)."""
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

