"""Helpers shared by the benchmark scripts: timing, memory, environment, reporting.

    with MemorySampler() as memory:
      seconds = timed(lambda: run())
    print_report(result, rows)   # one JSON line, then a Markdown table

The peers run on `torch_device(args.torch_device)`: a GPU when torch sees one (timed with
`torch_synchronized`), else the CPU.

Memory figures are process RSS (resident set size, from /proc/self/statm): for JAX on CPU
and for torch alike it counts what the allocators hold, buffers and caches included,
not what each framework says it allocated. `MemorySampler` reports the high-water mark
of RSS while it is active minus RSS when it started (polled every few milliseconds, so a
spike shorter than the poll can be missed); `max_rss_mb` is the kernel's high-water mark
for the whole process so far (getrusage).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import threading
import time
from typing import Callable, Sequence

_PAGE = os.sysconf('SC_PAGE_SIZE')


def rss_mb() -> float:
  """Current resident set size of this process, MiB."""
  with open('/proc/self/statm', encoding='ascii') as f:
    return int(f.read().split()[1]) * _PAGE / 2**20


def max_rss_mb() -> float:
  """High-water RSS of this process since it started, MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler:
  """Context manager: peak RSS above the starting RSS while active (`peak_delta_mb`)."""

  def __init__(self, interval_s: float = 0.002):
    self.interval_s = interval_s
    self.start_mb = self.peak_mb = 0.0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def _poll(self):
    while not self._stop.is_set():
      self.peak_mb = max(self.peak_mb, rss_mb())
      time.sleep(self.interval_s)

  def __enter__(self):
    self.start_mb = self.peak_mb = rss_mb()
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak_mb = max(self.peak_mb, rss_mb())

  @property
  def peak_delta_mb(self) -> float:
    return self.peak_mb - self.start_mb


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
  """Best wall-clock seconds of `repeats` calls of fn (fn must block until done)."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def torch_device(choice: str = 'auto') -> str:
  """The peers' torch device: 'cuda' when choice is 'auto' and torch sees a GPU, else choice."""
  import torch  # pylint: disable=import-outside-toplevel
  if choice == 'auto':
    return 'cuda' if torch.cuda.is_available() else 'cpu'
  return choice


def torch_synchronized(fn: Callable[[], object], device: str) -> Callable[[], object]:
  """fn, then a wait for the device's queued work (CUDA runs asynchronously)."""
  import torch  # pylint: disable=import-outside-toplevel

  def run():
    out = fn()
    if device.startswith('cuda'):
      torch.cuda.synchronize()
    return out
  return run


def environment() -> dict:
  """Versions and machine, for the JSON record (accelerators too, where there are any)."""
  info = {'python': platform.python_version(), 'machine': platform.machine(),
          'cpus': os.cpu_count(), 'cpu': _cpu_name()}
  for name in ('jax', 'torch', 'captum', 'flax'):
    module = sys.modules.get(name)
    if module is not None:
      info[name] = getattr(module, '__version__', '?')
  if 'jax' in sys.modules:
    info['jax_device'] = sys.modules['jax'].devices()[0].device_kind
  torch = sys.modules.get('torch')
  if torch is not None and torch.cuda.is_available():
    info['torch_device'] = torch.cuda.get_device_name()
  info['tensorflow_imported'] = 'tensorflow' in sys.modules
  return info


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo', encoding='ascii', errors='replace') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A Markdown table; floats get 4 significant digits."""
  cell = lambda v: f'{v:.4g}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def print_report(result: dict, header: Sequence[str], rows: Sequence[Sequence[object]],
                 json_path: str | None = None) -> None:
  """The result as one JSON line (also appended to json_path), then a Markdown table."""
  line = json.dumps(result, sort_keys=True)
  print(line)
  if json_path:
    with open(json_path, 'a', encoding='utf-8') as f:
      f.write(line + '\n')
  print()
  print(markdown_table(header, rows))
