"""notebooks/quickstart.ipynb runs headless, top to bottom, with random weights (full
tier: a kernel start and a full-size ZFNet, about 20 s)."""

import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / 'notebooks' / 'quickstart.ipynb'


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  outputs = [output for cell in notebook.cells if cell.cell_type == 'code'
             for output in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2                      # the three rules' grid, the occlusion panels
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'most probable class' in text and 'probability without occluder' in text
