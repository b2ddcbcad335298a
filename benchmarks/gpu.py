r"""Every GPU figure of issue 17 in one prepared run, for one call on a lent GPU machine.

    python benchmarks/gpu.py --fetch_wheels     # here, once: the pure-Python packages that
                                                # the GPU machine lacks, into .whl/
    # on the GPU machine, one device call (carry: .whl), the wheels first:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \
        python3 benchmarks/gpu.py --out $OUT
    python benchmarks/gpu.py --quick --out /tmp/gpu   # the same steps, tiny, on a CPU

The steps, each the benchmark script of its own in a subprocess with its own time limit
(a step that fails or runs out is reported as such and the next one runs); a step that
would not fit in what is left of --budget_s is skipped. In order of priority:

1. `environment`: nvidia-smi, the jax and torch versions and devices.
2. `train batch 256 bfloat16`: the ZFNet train step at 224x224 (benchmarks/train.py)
   against torch.compile in channels_last on the same GPU; images/s and MFU against the
   device's dense peak (PEAK_TFLOPS: bfloat16, or TF32 for float32, which is how JAX
   computes float32 products on the GPU by default; torch is set to TF32 for its float32
   products too).
3. `deconv`: 16 images x 64 conv5 channels (benchmarks/deconv.py), Captum on the same GPU.
4. `occlusion`: 625 positions (benchmarks/occlusion.py), Captum on the same GPU.
5. The other training configurations: batch 256 float32, batch 128 bfloat16 and float32.

Writes OUT/gpu.jsonl (each script's JSON line), OUT/gpu.log (everything printed) and
OUT/gpu.md (the tables for benchmarks/RESULTS.md; also printed at the end). JAX takes
XLA_PYTHON_CLIENT_MEM_FRACTION of the GPU's memory (0.45), so torch has the rest in the
same process. --quick: small sizes and torch eager, about 140 s in all on a 2-core CPU,
so the whole path is tested without a GPU (tests/test_benchmarks.py, full tier).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))

from common import markdown_table as table  # pylint: disable=wrong-import-position

# Dense peaks in TFLOP/s, (bfloat16, TF32), by a part of the device name (first match).
PEAK_TFLOPS = (('H200', (989.4, 494.7)), ('H100 PCIe', (756.0, 378.0)),
               ('H100 NVL', (835.0, 417.5)), ('H100', (989.4, 494.7)),
               ('A100', (312.0, 156.0)))
WHEELS = ('ml_collections==1.1.0', 'captum==0.9.0')  # not in the GPU machine's image


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.environ.get('OUT', '/tmp/zfjax-gpu'),
                      help='folder for gpu.jsonl, gpu.log and gpu.md (default: $OUT)')
  parser.add_argument('--budget_s', type=float, default=480,
                      help='all steps together; a step that would not fit is skipped')
  parser.add_argument('--quick', action='store_true',
                      help='tiny sizes and torch eager: the whole path, on a CPU too')
  parser.add_argument('--fetch_wheels', action='store_true',
                      help=f'download {", ".join(WHEELS)} (py3 wheels) into .whl/ and stop')
  return parser.parse_args(argv)


def device_name() -> str:
  """The GPU's name from nvidia-smi ('' without one): read without importing JAX."""
  if not shutil.which('nvidia-smi'):
    return ''
  out = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                       capture_output=True, text=True, check=False).stdout
  return out.strip().splitlines()[0] if out.strip() else ''


def peak_tflops(name: str, dtype: str) -> float | None:
  """The dense peak of the device for dtype (TF32 for float32), None if unknown."""
  for part, (bf16, tf32) in PEAK_TFLOPS:
    if part in name:
      return bf16 if dtype == 'bfloat16' else tf32
  return None


def steps(quick: bool, gpu: str) -> list[tuple[str, list[str], float]]:
  """(name, command, time limit s) of each step, in the order they run."""
  python = [sys.executable]
  bench = lambda script: python + [str(ROOT / 'benchmarks' / script)]
  env_check = python + ['-c', (
      'import json, jax, torch; print(json.dumps({"jax": jax.__version__, '
      '"jax_devices": [d.device_kind for d in jax.devices()], "torch": torch.__version__, '
      '"cuda": torch.cuda.is_available() and torch.cuda.get_device_name()}))')]
  trains = []
  for batch in ((4,) if quick else (256, 128)):
    for dtype in ('bfloat16', 'float32'):
      command = bench('train.py') + ['--batch_size', str(batch), '--dtype', dtype]
      command += ['--steps', '2', '--warmup', '1'] if quick else [
          '--steps', '20', '--warmup', '3', '--torch_compile', '--channels_last']
      peak = peak_tflops(gpu, dtype)
      command += ['--peak_tflops', str(peak)] if peak else []
      trains.append((f'train batch {batch} {dtype}', command, 300 if quick else 150))
  deconv = ('deconv', bench('deconv.py') + (
      ['--quick'] if quick else ['--images', '16', '--channels', '64', '--matmul', '8192',
                                 '--repeats', '5']), 300 if quick else 120)
  occlusion = ('occlusion', bench('occlusion.py') + ['--thresholds', '', '--skip_naive'] + (
      ['--quick'] if quick else ['--repeats', '5']), 300 if quick else 150)
  # Each benchmark once before the other training configurations (torch.compile takes a
  # minute each), so that a short budget still leaves a figure of every kind.
  return [('environment', env_check, 120), trains[0], deconv, occlusion, *trains[1:]]


def run_steps(args, gpu: str) -> list[dict]:
  """Each step in a subprocess; its output goes to gpu.log. [{name, status, seconds}]."""
  out = pathlib.Path(args.out)
  jsonl, log = out / 'gpu.jsonl', out / 'gpu.log'
  env = dict(os.environ, PYTHONUNBUFFERED='1', XLA_PYTHON_CLIENT_MEM_FRACTION='0.45')
  env['PYTHONPATH'] = os.pathsep.join(p for p in (str(ROOT), env.get('PYTHONPATH')) if p)
  deadline, report = time.monotonic() + args.budget_s, []
  for name, command, limit in steps(args.quick, gpu):
    if name != 'environment':
      command = command + ['--json', str(jsonl)]
    left = deadline - time.monotonic()
    if left < min(limit, 60):
      report.append({'name': name, 'status': f'skipped ({left:.0f} s left of the budget)'})
      continue
    start = time.monotonic()
    with open(log, 'a', encoding='utf-8') as f:
      f.write(f'\n=== {name}: {" ".join(command)}\n')
      f.flush()
      try:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env,
                              timeout=min(limit, left), cwd=ROOT, check=False)
        status = 'ok' if done.returncode == 0 else f'failed (exit {done.returncode})'
      except subprocess.TimeoutExpired:
        status = f'timed out after {min(limit, left):.0f} s'
    report.append({'name': name, 'status': status,
                   'seconds': round(time.monotonic() - start, 1)})
    print(f'{name}: {status} in {report[-1]["seconds"]} s', flush=True)
  return report


def summary(lines: list[dict], report: list[dict], gpu: str) -> str:
  """The Markdown for benchmarks/RESULTS.md: one table per benchmark, then the steps."""
  env = {}  # the scripts' environments together (only deconv.py and occlusion.py load captum)
  for line in lines:
    env.update(line.get('environment', {}))
  parts = [f'Device: {gpu or "no GPU (nvidia-smi found none)"}; jax {env.get("jax", "?")} '
           f'({env.get("jax_device", "?")}), torch {env.get("torch", "?")}, captum '
           f'{env.get("captum", "?")}, Python {env.get("python", "?")}.']
  train = [line for line in lines if line.get('benchmark') == 'train_step']
  if train:
    rows = []
    for line in train:
      ours, theirs = line['zfjax'], line.get('torch', {})
      peer = ('torch.compile' if theirs.get('compiled') else 'torch eager') + (
          ', channels_last' if theirs.get('channels_last') else '')
      rows.append((line['batch_size'], line['dtype'], ours['images_per_sec'],
                   ours.get('mfu', ''), peer, theirs.get('images_per_sec', ''),
                   theirs.get('mfu', ''), line.get('zfjax_over_torch', '')))
    parts.append(table(('batch', 'dtype', 'zfjax images/s', 'zfjax MFU', 'peer',
                        'peer images/s', 'peer MFU', 'zfjax / peer'), rows))
  for line in lines:
    if line.get('benchmark') == 'deconv':
      rows = [('zfjax deconv.project', line['zfjax']['ms_per_projection'],
               line['zfjax']['compile_s'], '', '')]
      rows += [(f'Captum, {mode}', line[f'captum_{mode}']['ms_per_projection'], '',
                line[f'captum_{mode}']['speedup_of_zfjax'],
                line[f'captum_{mode}']['max_rel_error_vs_zfjax'])
               for mode in ('batched', 'per_neuron') if f'captum_{mode}' in line]
      parts.append(f'Deconvnet, {line["projections"]} {line["layer"]} projections:\n\n'
                   + table(('implementation', 'ms / projection', 'compile s',
                            'zfjax speedup', 'max rel error'), rows))
    if line.get('benchmark') == 'occlusion':
      rows = [(name, line[key]['total_s'], line[key].get('compile_s', ''),
               line[key].get('speedup_vs_captum', ''), line[key].get('max_prob_error', ''))
              for key, name in (('zfjax_default', 'zfjax default (Winograd)'),
                                ('zfjax_exact', 'zfjax exact direct'),
                                ('captum', 'Captum Occlusion')) if key in line]
      parts.append(f'Occlusion, {line["positions"]} positions:\n\n' + table(
          ('implementation', 'seconds', 'compile s', 'vs Captum', 'max prob error'), rows))
  parts.append(table(('step', 'status', 'seconds'),
                     [(r['name'], r['status'], r.get('seconds', '')) for r in report]))
  return '\n\n'.join(parts) + '\n'


def fetch_wheels() -> None:
  """The wheels the GPU machine lacks, for its Python 3.12, into ROOT/.whl (git-ignored)."""
  subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
                  '--python-version', '3.12', '-d', str(ROOT / '.whl'), *WHEELS], check=True)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.fetch_wheels:
    fetch_wheels()
    return 0
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  for name in ('gpu.jsonl', 'gpu.log', 'gpu.md'):
    (out / name).unlink(missing_ok=True)
  gpu = device_name()
  if shutil.which('nvidia-smi'):
    with open(out / 'gpu.log', 'w', encoding='utf-8') as f:
      subprocess.run(['nvidia-smi'], stdout=f, stderr=subprocess.STDOUT, check=False)
  report = run_steps(args, gpu)
  jsonl = out / 'gpu.jsonl'
  lines = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
  text = summary(lines, report, gpu)
  (out / 'gpu.md').write_text(text, encoding='utf-8')
  print(text)
  return 0 if all(r['status'] == 'ok' for r in report) else 1


if __name__ == '__main__':
  sys.exit(main())
