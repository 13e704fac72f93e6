"""The README's shell blocks stay true to the code, without running them: every tool, config and
make target they name exists, every flag they pass is one the tool defines, every config arg and
`--config.` override names a real field, and every corpus or run a training command reads was
written by an earlier command of the README (as a newcomer runs them, top to bottom)."""
import ast
import importlib.util
import os
import re
import shlex

import pytest

from tests import helpers

README = os.path.join(helpers.REPO, 'README.md')
_TOOL = re.compile(r'(tools/\w+\.py|bench/\w+\.py|tests/soak/\w+\.py)$')
_MODULE_NAME = re.compile(r'bigvis(\.\w+)+(:\w+)?$')


def _commands():
  """(block number, argv) of every command in the README's sh blocks, in order."""
  with open(README) as f:
    blocks = re.findall(r'```(?:sh|bash)\n(.*?)```', f.read(), re.S)
  out = []
  for n, block in enumerate(blocks):
    block = re.sub(r'\\\n\s*', ' ', block)  # continuation lines
    for line in block.splitlines():
      line = re.split(r'\s#', line)[0].strip()
      if not line or line.startswith('#') or line.startswith(('for ', 'done')):
        continue
      for part in re.split(r'&&|;|\|', line.removeprefix('do ').strip()):
        if part.strip():
          out.append((n, shlex.split(part)))
  return out


def _module_file(name, folder):
  """The repo file of an imported module: bigvis.x.y, or a sibling of the importing script."""
  base = os.path.join(helpers.REPO, *name.split('.')) if name.startswith('bigvis') else (
      os.path.join(folder, name))
  return next((f for f in (base + '.py', os.path.join(base, '__init__.py')) if os.path.exists(f)),
              None)


def _sources(path):
  """A tool's source and that of the repo modules it imports, transitively: where its argparse
  flags (subcommands included) may be defined."""
  todo, texts = [os.path.join(helpers.REPO, path)], {}
  while todo:
    f = todo.pop()
    if f in texts:
      continue
    with open(f) as fh:
      texts[f] = fh.read()
    for node in ast.walk(ast.parse(texts[f])):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
      elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
          _MODULE_NAME.match(node.value)):
        names = [node.value.partition(':')[0]]  # Imported by name (importlib), e.g. prepare.py.
      else:
        continue
      todo += [m for m in (_module_file(n, os.path.dirname(f)) for n in names) if m]
  return ''.join(texts[f] for f in sorted(texts))


def _config(spec):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('readme_config', os.path.join(helpers.REPO, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _field(config, dotted):
  for key in dotted.split('.'):
    assert key in config, f'--config.{dotted}: no field {key!r}'
    config = config[key]
  return config


COMMANDS = _commands()


def test_the_readme_has_commands():
  assert len(COMMANDS) > 30  # The parser still finds them.


def test_tools_flags_and_make_targets_exist():
  with open(os.path.join(helpers.REPO, 'Makefile')) as f:
    targets = set(re.findall(r'^([\w.-]+):', f.read(), re.M))
  for _, argv in COMMANDS:
    if argv[0] == 'make':
      assert set(argv[1:]) <= targets, f'make {argv[1:]}: not a Makefile target'
    for i, token in enumerate(argv):
      if not _TOOL.search(token):
        continue
      path = _TOOL.search(token)[1]
      assert os.path.exists(os.path.join(helpers.REPO, path)), f'{path}: no such tool'
      src = _sources(path)
      for flag in argv[i + 1:]:
        if flag == '--':  # What follows goes to Beam, not the tool.
          break
        name = flag.split('=')[0]
        if name.startswith('--') and name != '--help':
          defined = f"'{name}'" in src or f'"{name}"' in src
          assert defined, f'{shlex.join(argv)}: {path} has no {name}'


def test_training_commands_name_real_config_fields_and_inputs_made_before():
  made = set()  # Paths an earlier command wrote (--out / --workdir), in README order.
  checked = 0
  for _, argv in COMMANDS:
    if 'bigvis.train' in argv:
      spec = argv[argv.index('--config') + 1]
      config = _config(spec)
      for flag in argv:
        if flag.startswith('--config.'):
          key, _, value = flag.removeprefix('--config.').partition('=')
          _field(config, key)
          if key == 'input.data_dir':
            config.input.data_dir = value
      for needed in (config.input.data_dir, config.init.path):
        if needed and not needed.startswith('gs://') and '...' not in needed:
          written = needed.rstrip('/') in made
          assert written, (
              f'{shlex.join(argv)} reads {needed}, which no earlier README command writes')
      checked += 1
    for flag in ('--out', '--workdir'):
      if flag in argv:
        made.add(argv[argv.index(flag) + 1].rstrip('/'))
  assert checked >= 5


@pytest.mark.parametrize('spec', sorted({a[a.index('--config') + 1] for _, a in COMMANDS
                                         if '--config' in a and 'bigvis.train' in a}))
def test_config_args_parse(spec):
  _config(spec)  # Unknown config args raise ValueError naming them.
