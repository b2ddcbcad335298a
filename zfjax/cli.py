"""What the command-line programs share: quiet library logs, one-line user errors."""

import logging
import sys

CHATTY_LIBRARIES = ('/orbax/', '/jax/', '/etils/')


def quiet_libraries(record: logging.LogRecord) -> bool:
  """A logging filter: keeps Orbax's, JAX's and etils' INFO lines off the console
  (their warnings still show)."""
  quiet = any(part in record.pathname for part in CHATTY_LIBRARIES)
  return record.levelno >= logging.WARNING or not quiet


def fail(message: str, status: int = 1) -> None:
  """A user error: one line on stderr, exit `status`, no traceback."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)
