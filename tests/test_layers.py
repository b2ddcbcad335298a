"""The package's layers, read from the source: imports run cli -> report/train -> core.

Layers by folder: `zfjax/cli/` (and the entry modules: `__main__.py` files, the shims that
keep `python -m zfjax.NAME` working, the top-level train.py and visualize.py) may import
anything; `zfjax/report/` and `zfjax/train/` import only the core and their own layer;
the core (every other module of `zfjax/`, `zfjax/configs/` included) imports only the
core. Imports inside functions count. An `if __name__ == '__main__':` block at the end of
a core module (`python -m zfjax.interop`) runs only when the file is the program: it may
import the cli, and only the cli. No cycles among modules, and no module over 600 lines.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'zfjax'
ENTRY_SHIMS = ('zfjax.visualize', 'zfjax.transfer', 'zfjax.ensemble', 'zfjax.tables')
TOP_LEVEL_PROGRAMS = ('train.py', 'visualize.py')
RANK = {'core': 0, 'train': 1, 'report': 1, 'cli': 2}
MAX_LINES = 600


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer(name: str) -> str:
  parts = name.split('.')
  if parts[0] != 'zfjax':
    return 'cli'  # the top-level programs
  if name in ENTRY_SHIMS or parts[-1] == '__main__' or parts[1:2] == ['cli']:
    return 'cli'
  if parts[1:2] in (['train'], ['report']):
    return parts[1]
  return 'core'


def is_module(name: str) -> bool:
  path = ROOT.joinpath(*name.split('.'))
  return path.with_suffix('.py').is_file() or (path / '__init__.py').is_file()


def imported(node: ast.AST, package: str) -> list:
  """The zfjax modules an import statement loads.

  `from package import name` loads the package (its __init__) and, when `name` is one of
  its submodules, that submodule too.
  """
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names if alias.name.split('.')[0] == 'zfjax']
  if not isinstance(node, ast.ImportFrom):
    return []
  base = node.module or ''
  if node.level:
    anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
    base = '.'.join(anchor + ([base] if base else []))
  if base.split('.')[0] != 'zfjax':
    return []
  names = [base]  # importing from a package runs its __init__ first
  for alias in node.names:
    candidate = f'{base}.{alias.name}'
    if is_module(candidate):
      names.append(candidate)
  return names


def is_main_block(node: ast.AST) -> bool:
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
          and isinstance(node.test.left, ast.Name) and node.test.left.id == '__name__')


def imports_of(path: pathlib.Path) -> tuple[set, set]:
  """(imports anywhere but a `__main__` block, imports inside one) of one file."""
  tree = ast.parse(path.read_text(), str(path))
  name = module_name(path)
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  main_blocks = [node for node in tree.body if is_main_block(node)]
  in_main = {id(n) for block in main_blocks for n in ast.walk(block)}
  body, entry = set(), set()
  for node in ast.walk(tree):
    for target in imported(node, package):
      (entry if id(node) in in_main else body).add(target)
  return body, entry


def graph() -> tuple[dict, dict]:
  files = sorted(PACKAGE.rglob('*.py')) + [ROOT / name for name in TOP_LEVEL_PROGRAMS]
  body, entry = {}, {}
  for path in files:
    name = module_name(path)
    body[name], entry[name] = imports_of(path)
  return body, entry


BODY, ENTRY = graph()


def test_the_graph_is_read():
  """The reader finds the imports it must judge (a reader that finds none passes all)."""
  assert 'zfjax.architecture' in BODY['zfjax.models']
  assert 'zfjax.cli.train' in BODY['train']
  assert len(BODY) > 30 and sum(map(len, BODY.values())) > 60


def back_imports(module: str, targets) -> list:
  """The imports of `module` that go up the layers or across between train and report."""
  own = layer(module)
  return sorted(t for t in targets if layer(t) != own and RANK[layer(t)] >= RANK[own])


def cycles(body: dict) -> list:
  """Every cycle a depth-first walk of the import graph meets, as a list of names."""
  visiting, done, found = [], set(), []

  def visit(name):
    if name in visiting:
      found.append(visiting[visiting.index(name):] + [name])
      return
    if name in done:
      return
    visiting.append(name)
    for target in sorted(body.get(name, ())):
      visit(target)
    visiting.pop()
    done.add(name)

  for name in sorted(body):
    visit(name)
  return found


@pytest.mark.parametrize('module', sorted(BODY))
def test_imports_run_down_the_layers(module):
  wrong = back_imports(module, BODY[module])
  assert not wrong, f'{module} ({layer(module)}) imports {wrong} ({[layer(w) for w in wrong]})'


def test_main_blocks_only_call_the_cli():
  wrong = {module: sorted(targets) for module, targets in ENTRY.items()
           if any(layer(target) != 'cli' for target in targets)}
  assert not wrong


def test_no_import_cycles():
  found = cycles(BODY)
  assert not found, ' ; '.join(' -> '.join(cycle) for cycle in found)


def test_the_checks_fire():
  """A function-level core -> cli import, train -> report, and a circle are all caught."""
  source = 'def f():\n  from zfjax import cli\n  import zfjax.train\n'
  targets = {t for node in ast.walk(ast.parse(source)) for t in imported(node, 'zfjax')}
  assert back_imports('zfjax.models', targets) == ['zfjax.cli', 'zfjax.train']
  assert back_imports('zfjax.train.loop', {'zfjax.report'}) == ['zfjax.report']
  assert back_imports('zfjax.cli.train', {'zfjax.report', 'zfjax.models'}) == []
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == [['a', 'b', 'c', 'a']]
  assert cycles({'a': {'b'}, 'b': set()}) == []
  package_init = 'from zfjax.train import faults\n'
  targets = {t for node in ast.walk(ast.parse(package_init)) for t in imported(node, 'zfjax')}
  assert targets == {'zfjax.train', 'zfjax.train.faults'}  # a package __init__ counts


@pytest.mark.parametrize('path', sorted(PACKAGE.rglob('*.py')), ids=lambda p: str(
    p.relative_to(ROOT)))
def test_no_module_is_over_600_lines(path):
  assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize('name', TOP_LEVEL_PROGRAMS)
def test_top_level_programs_are_thin(name):
  assert len((ROOT / name).read_text().splitlines()) <= 80
