"""The paper's figures, their gallery and its tables, from trained nets: the report layer.

    from zfjax import report
    fig, numbers = report.occlusion('/tmp/zf', images=['cat.jpg'], patch=32, stride=8)
    report.gallery('/tmp/zf', '/tmp/zf/figures')   # every figure: PNG, JSON, index.html

Figures (zfjax.report.figures; docs/figures.md describes each and its options):
`top9` (Fig. 2), `evolution` (Fig. 4), `invariance` (Fig. 5), `filters` (Fig. 6),
`occlusion` (Fig. 7), `correspondence` (Table 1). `gallery` and `FigureFolder`
(zfjax.report.folder) write them. The modules: examples (where images come from),
options (checks and defaults), plots (drawing), strongest and filter_stats (Fig. 4 and 6
material), results, tables and paper_numbers (Tables 2-7). The names here load their
module on first use, so `zfjax.report.tables` imports no JAX.
"""

import importlib

_HOMES = {'top9': 'figures', 'evolution': 'figures', 'invariance': 'figures',
          'filters': 'figures', 'occlusion': 'figures', 'correspondence': 'figures',
          'gallery': 'folder', 'FigureFolder': 'folder', 'FigureError': 'options'}
__all__ = list(_HOMES)


def __getattr__(name: str):
  """`report.NAME` for the names above, imported from their module on first use."""
  if name not in _HOMES:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{_HOMES[name]}'), name)
  globals()[name] = value
  return value


def __dir__() -> list:
  return sorted(set(globals()) | set(__all__))
