"""The environment bootstrap shared by train.sh, val.sh and test.sh (tools/setup_env.sh).

Each test works on a copy of the scripts with a fake `.venv/bin/python` that records how it was
called, so the decisions (create, reuse, reinstall, opt out, fail) are checked without installing."""
import os
import shutil
import subprocess

import pytest

from config import REPO_ROOT

FAKE_PYTHON = '''#!/usr/bin/env bash
echo "$@" >> "$(dirname "$0")/calls.log"
exit ${FAKE_PIP_STATUS:-0}
'''


@pytest.fixture
def repo(tmp_path):
    for name in ('requirements.txt', 'requirements-lock.txt'):
        shutil.copy(os.path.join(REPO_ROOT, name), tmp_path / name)
    (tmp_path / 'tools').mkdir()
    shutil.copy(os.path.join(REPO_ROOT, 'tools', 'setup_env.sh'), tmp_path / 'tools' / 'setup_env.sh')
    venv_bin = tmp_path / '.venv' / 'bin'
    venv_bin.mkdir(parents=True)
    (venv_bin / 'python').write_text(FAKE_PYTHON)
    (venv_bin / 'python').chmod(0o755)
    return tmp_path


def bootstrap(repo, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX', 'PRIMKD_NO_VENV')}
    return subprocess.run(['bash', '-c', 'source tools/setup_env.sh && echo "PYTHON=$PYTHON"'],
                          cwd=repo, env={**clean, **env}, capture_output=True, text=True)


def calls(repo):
    log = repo / '.venv' / 'bin' / 'calls.log'
    return log.read_text().splitlines() if log.exists() else []


def test_installs_the_locked_set_once_then_reuses(repo):
    first = bootstrap(repo)
    assert first.returncode == 0, first.stderr
    assert f'PYTHON={repo}/.venv/bin/python' in first.stdout
    [install] = calls(repo)
    assert '-m pip install' in install
    assert f'-r {repo}/requirements.txt -c {repo}/requirements-lock.txt' in install
    assert 'installing requirements.txt' in first.stderr

    second = bootstrap(repo)
    assert second.returncode == 0 and len(calls(repo)) == 1 and 'installing' not in second.stderr

    with open(repo / 'requirements.txt', 'a') as f:
        f.write('# changed\n')
    third = bootstrap(repo)
    assert third.returncode == 0 and len(calls(repo)) == 2


def test_failed_install_stops_with_the_error_and_retries_next_time(repo):
    failed = bootstrap(repo, FAKE_PIP_STATUS='1')
    assert failed.returncode == 1
    assert 'installing the requirements failed' in failed.stderr and 'PYTHON=' not in failed.stdout
    assert not (repo / '.venv' / '.requirements.sha256').exists()
    again = bootstrap(repo)
    assert again.returncode == 0 and len(calls(repo)) == 2


@pytest.mark.parametrize('env', [{'PRIMKD_NO_VENV': '1'}, {'VIRTUAL_ENV': '/somewhere/env'},
                                 {'CONDA_PREFIX': '/opt/conda/envs/x'}])
def test_an_active_environment_is_used_as_it_is(repo, env):
    result = bootstrap(repo, **env)
    assert result.returncode == 0, result.stderr
    assert f'PYTHON={shutil.which("python") or shutil.which("python3")}' in result.stdout
    assert calls(repo) == []
