"""The layers (docs/architecture.md): utils <- models <- config <- dataloader <- engine <- the scripts
(train.py, val.py) and tools/, each importing only below it; no tool imports another tool or a
script. Also: configs are read without torch, and the name lists of utils/constants.py agree with
the tables they name."""
import ast
import os
import subprocess
import sys

import pytest

from config import REPO_ROOT

LAYERS = {'utils': 0, 'models': 1, 'config': 2, 'dataloader': 3, 'engine': 4, 'train': 5, 'val': 5, 'tools': 5}
SCRIPTS = {'train', 'val'}
# Known violations: (importing module, imported package). None left.
ALLOWED = set()


def project_modules():
    for package in ('utils', 'models', 'config', 'dataloader', 'engine', 'tools'):
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in sorted(files):
                if name.endswith('.py'):
                    path = os.path.join(folder, name)
                    yield package, os.path.relpath(path, REPO_ROOT)
    for script in sorted(SCRIPTS):
        yield script, f'{script}.py'


def imported_packages(path):
    """The top-level names of every absolute import in the file, nested imports included."""
    with open(os.path.join(REPO_ROOT, path)) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split('.')[0]


def violates(layer, package):
    """Whether a module of `layer` may not import `package`: a layer above it, or for a tool or a
    script, any tool or script (a package may import itself, except tools)."""
    entry_points = SCRIPTS | {'tools'}
    if layer in entry_points and package in entry_points:
        return package != layer or layer == 'tools'
    return LAYERS[package] > LAYERS[layer]


def layer_violations():
    return sorted((path, package) for layer, path in project_modules()
                  for package in set(imported_packages(path)) & set(LAYERS) if violates(layer, package))


def test_every_module_imports_only_the_layers_below_it():
    violations = set(layer_violations())
    assert sorted(violations - ALLOWED) == [], 'modules importing a layer above them, a tool or a script'
    assert sorted(ALLOWED - violations) == [], 'allow-listed violations that are gone: remove them from ALLOWED'


def test_the_layer_check_sees_nested_and_dotted_imports(tmp_path, monkeypatch):
    source = 'import os\nfrom utils.io import atomic_write\n\ndef f():\n    import engine.run_dir\n    from . import x\n'
    (tmp_path / 'probe.py').write_text(source)
    monkeypatch.setattr(sys.modules[__name__], 'REPO_ROOT', str(tmp_path))
    assert sorted(imported_packages('probe.py')) == ['engine', 'os', 'utils']


@pytest.mark.integration
def test_reading_a_config_imports_no_torch():
    """`python -m config config/nyu_b4.py` prints the resolved config without torch, models or tools."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['config', 'config/nyu_b4.py']\n"
             "runpy.run_module('config', run_name='__main__')\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models', 'tools'))\n"
             "print('heavy modules:', heavy)\n")
    result = subprocess.run([sys.executable, '-c', probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "config = EasyDict({" in result.stdout and "'backbone': 'mit_b4'" in result.stdout
    assert result.stdout.rstrip().endswith('heavy modules: []')


@pytest.mark.parametrize('names, table', [
    ('BACKBONES', 'models.encoders.mit:MIT_SIZES'),
    ('LOGIT_LOSS_NAMES', 'models.distill:LOGIT_LOSSES'),
    ('SYNTHETIC_PRESETS', 'dataloader.synthetic_rooms:PRESETS'),
])
def test_constant_names_agree_with_their_tables(names, table):
    import importlib

    from utils import constants
    module, attribute = table.split(':')
    assert tuple(getattr(importlib.import_module(module), attribute)) == getattr(constants, names)
