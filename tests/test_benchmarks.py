"""benchmarks/gpu.py, the prepared run for a lent GPU machine, works before one is lent.

The GPU machine gives a session a few minutes, once in a while: its one call must not be
spent on a broken script. The full tier runs the whole script here on the CPU (--quick:
the same steps and scripts at small sizes, torch eager) and reads its tables.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))

import gpu  # noqa: E402  (benchmarks/gpu.py)
from zfjax import architecture  # noqa: E402


def _benchmark(name: str):
  """benchmarks/<name>.py as a module (its names may clash with the repository root's)."""
  spec = importlib.util.spec_from_file_location(f'benchmarks_{name}',
                                                REPO / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_mfu_counts_the_models_flops_not_the_algorithms():
  """ZFNet's multiply-adds from the paper's Fig. 3 shapes, written out by hand."""
  forward = (110 * 110 * 96 * 7 * 7 * 3 + 26 * 26 * 256 * 5 * 5 * 96
             + 13 * 13 * 384 * 3 * 3 * 256 + 13 * 13 * 384 * 3 * 3 * 384
             + 13 * 13 * 256 * 3 * 3 * 384 + 6 * 6 * 256 * 4096 + 4096 * 4096 + 4096 * 1000)
  flops = _benchmark('train').model_flops_per_step(architecture.zfnet(1000), 224, 32)
  assert flops == 3 * 2 * 32 * forward


def test_peaks_follow_the_device_name_and_dtype():
  assert gpu.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4
  assert gpu.peak_tflops('NVIDIA H100 80GB HBM3', 'float32') == 494.7  # TF32
  assert gpu.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == 756.0
  assert gpu.peak_tflops('NVIDIA H200', 'float32') == 494.7
  assert gpu.peak_tflops('', 'bfloat16') is None
  assert gpu.peak_tflops('Tesla T4', 'float32') is None


def test_the_gpu_run_times_every_figure_the_issue_asks_for():
  """Batch 256 and 128, bfloat16 and float32, against torch.compile in channels_last."""
  steps = gpu.steps(quick=False, gpu='NVIDIA H100 80GB HBM3')
  names = [name for name, _, _ in steps]
  assert names == ['environment', 'train batch 256 bfloat16', 'deconv', 'occlusion',
                   'train batch 256 float32', 'train batch 128 bfloat16',
                   'train batch 128 float32']
  for name, command, _ in steps:
    if name.startswith('train'):
      assert {'--torch_compile', '--channels_last', '--peak_tflops'} <= set(command), name
  assert sum(limit for _, _, limit in steps) <= 1000


@pytest.mark.slow
def test_quick_run_on_the_cpu_writes_every_table(tmp_path):
  result = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'gpu.py'), '--quick',
                           '--out', str(tmp_path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900, check=False)
  log = (tmp_path / 'gpu.log').read_text() if (tmp_path / 'gpu.log').exists() else ''
  assert result.returncode == 0, result.stdout[-3000:] + log[-5000:]
  lines = [json.loads(line) for line in (tmp_path / 'gpu.jsonl').read_text().splitlines()]
  assert [line['benchmark'] for line in lines] == ['train_step', 'deconv', 'occlusion',
                                                   'train_step']
  train = [line for line in lines if line['benchmark'] == 'train_step']
  assert {line['dtype'] for line in train} == {'bfloat16', 'float32'}
  assert all(line['zfjax']['images_per_sec'] > 0 and line['torch']['images_per_sec'] > 0
             for line in train)
  assert lines[1]['captum_per_neuron']['max_rel_error_vs_zfjax'] < 1e-4
  assert lines[2]['zfjax_default']['max_prob_error'] < 1e-4
  table = (tmp_path / 'gpu.md').read_text()
  for heading in ('zfjax images/s', 'Deconvnet, 8 conv5 projections', 'Occlusion, 49 positions',
                  'captum 0.', '| environment | ok |', '| occlusion | ok |'):
    assert heading in table, table
