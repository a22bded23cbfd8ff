"""The environment bootstrap shared by train.sh, val.sh and test.sh (tools/setup_env.sh).

Each test works on a copy of the scripts whose `.venv/bin/python` is a fake that records how it was
called (and fails when asked to), created by a fake PRIMKD_PYTHON, so the decisions (create, install,
reuse, reinstall, opt out, fail) are checked without installing anything."""
import os
import shutil
import subprocess

import pytest

from config import REPO_ROOT

FAKE_PYTHON = '''#!/usr/bin/env bash
echo "$@" >> "$(dirname "$0")/calls.log"
if [ -n "${FAKE_FAIL_ON:-}" ] && [[ "$*" == *"$FAKE_FAIL_ON"* ]]; then
    echo "fake installer: $FAKE_FAIL_ON failed" >&2
    exit 1
fi
'''
# What `PRIMKD_PYTHON -m venv DIR` does, minus the real interpreter.
FAKE_CREATOR = '''#!/usr/bin/env bash
[ "$1 $2" = "-m venv" ] && mkdir -p "$3/bin" && cp "$(dirname "$0")/fake_python" "$3/bin/python"
'''


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / 'repo'
    (repo / 'tools').mkdir(parents=True)
    for name in ('pyproject.toml', 'requirements-lock.txt', 'tools/setup_env.sh'):
        shutil.copy(os.path.join(REPO_ROOT, name), repo / name)
    for name, text in (('fake_python', FAKE_PYTHON), ('fake_creator', FAKE_CREATOR)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    return repo


def bootstrap(repo, **env):
    clean = {k: v for k, v in os.environ.items()
             if k not in ('VIRTUAL_ENV', 'CONDA_PREFIX', 'PRIMKD_NO_VENV', 'PYTHONPATH')}
    return subprocess.run(['bash', '-c', 'source tools/setup_env.sh && echo "PYTHON=$PYTHON PYTHONPATH=$PYTHONPATH"'],
                          cwd=repo, env={**clean, 'PRIMKD_PYTHON': str(repo.parent / 'fake_creator'), **env},
                          capture_output=True, text=True)


def calls(repo):
    log = repo / '.venv' / 'bin' / 'calls.log'
    return log.read_text().splitlines() if log.exists() else []


def install_calls(repo):
    """The three steps of an install, in order: the lock hash-checked, pip-sync removing what is not in
    the lock, the project editable (built offline by the lock's setuptools)."""
    lock = f'{repo}/requirements-lock.txt'
    return [f'-m pip install --disable-pip-version-check --require-hashes -r {lock}',
            f'-m piptools sync {lock}',
            f'-m pip install --disable-pip-version-check --no-deps --no-build-isolation -e {repo}']


@pytest.mark.integration
def test_creates_the_environment_installs_once_then_reuses(repo):
    first = bootstrap(repo)
    assert first.returncode == 0, first.stderr
    assert f'PYTHON={repo}/.venv/bin/python ' in first.stdout
    assert 'creating the project environment' in first.stderr and 'installing requirements-lock.txt' in first.stderr
    assert calls(repo) == install_calls(repo)

    second = bootstrap(repo)
    assert second.returncode == 0 and calls(repo) == install_calls(repo) and second.stderr == ''


@pytest.mark.integration
@pytest.mark.parametrize('changed', ['requirements-lock.txt', 'pyproject.toml'])
def test_a_changed_lock_or_project_reinstalls_and_syncs(repo, changed):
    """A package that left the lock is removed by the sync step, which every reinstall runs on the lock
    with the project's own interpreter (so in .venv, not wherever pip-tools came from)."""
    assert bootstrap(repo).returncode == 0
    with open(repo / changed, 'a') as f:
        f.write('# changed\n')
    again = bootstrap(repo)
    assert again.returncode == 0, again.stderr
    assert calls(repo) == install_calls(repo) * 2


@pytest.mark.integration
@pytest.mark.parametrize('step', ['--require-hashes', 'piptools sync', '-e '])
def test_a_failed_step_stops_with_the_installer_error_and_retries_next_time(repo, step):
    failed = bootstrap(repo, FAKE_FAIL_ON=step)
    assert failed.returncode == 1 and 'PYTHON=' not in failed.stdout
    assert f'fake installer: {step} failed' in failed.stderr
    assert failed.stderr.strip().endswith("installing the environment failed (the installer's message is above); "
                                          "fix it and run again")
    steps = install_calls(repo)
    failed_at = next(i for i, call in enumerate(steps) if step in call)
    assert calls(repo) == steps[:failed_at + 1]  # nothing after the failed step
    assert not (repo / '.venv' / '.lock.sha256').exists()

    again = bootstrap(repo)
    assert again.returncode == 0 and calls(repo)[failed_at + 1:] == steps


@pytest.mark.integration
@pytest.mark.parametrize('env', [{'PRIMKD_NO_VENV': '1'}, {'VIRTUAL_ENV': '/somewhere/env'},
                                 {'CONDA_PREFIX': '/opt/conda/envs/x'}])
def test_an_active_environment_is_used_as_it_is(repo, env):
    result = bootstrap(repo, **env)
    assert result.returncode == 0, result.stderr
    # This checkout's packages come first, installed in that environment or not.
    assert f'PYTHON={shutil.which("python") or shutil.which("python3")} PYTHONPATH={repo}\n' == result.stdout
    assert not (repo / '.venv').exists()
