"""The paper's figures, their gallery and its tables, from trained nets: the report layer.

    from zfjax import report
    fig, numbers = report.occlusion('/tmp/zf', images=['cat.jpg'], patch=32, stride=8)
    report.gallery('/tmp/zf', '/tmp/zf/figures')   # every figure: PNG, JSON, index.html

Figures (zfjax.report.figures; docs/figures.md describes each and its options):
`top9` (Fig. 2), `evolution` (Fig. 4), `invariance` (Fig. 5), `filters` (Fig. 6),
`occlusion` (Fig. 7), `correspondence` (Table 1). `gallery` and `FigureFolder`
(zfjax.report.folder) write them; `microscope` (zfjax.report.microscope_site) writes a static
site of every unit of a net. The modules: examples (where images come from),
options (checks and defaults), plots (drawing), strongest and filter_stats (Fig. 4 and 6
material), results, tables and paper_numbers (Tables 2-7). The names here load their
module on first use, so `zfjax.report.tables` imports no JAX.
"""

from zfjax import lazy_names

_HOMES = {'top9': 'figures', 'evolution': 'figures', 'invariance': 'figures',
          'filters': 'figures', 'occlusion': 'figures', 'correspondence': 'figures',
          'gallery': 'folder', 'FigureFolder': 'folder', 'FigureError': 'options',
          'microscope': 'microscope_site'}
__all__ = list(_HOMES)

__getattr__, __dir__ = lazy_names.exports(__name__, _HOMES)
