"""The processes the tests start (tools, torchrun drivers) import this checkout's packages, as the tests
themselves do through pytest.ini's `pythonpath`, whatever copy of the project the environment has
installed."""
import os

from config import REPO_ROOT

os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')]))
