"""The cells of a grid (one variant and one seed each): their commands and specs, whether a recorded
cell can be reused, and running the unfinished ones with the project's own launchers."""
import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time

from config import REPO_ROOT, ConfigError, load_config, parse_overrides
from dataloader.synthetic_rooms import ensure_synthetic_dataset
from engine import run_dir as rd
from engine.cli import resolve_train_config, train_args_parser
from models.distill import feature_term_on, kl_term_on
from utils.io import write_json

from .variants import (BUILT_IN_VARIANTS, GRID_KEYS, RGB_TEACHER, GridError, check_variant, grid_order)

CELL_SPEC = 'cell.json'          # in a cell folder: what the cell is
CELL_RESULT = 'result.json'      # in a cell folder: val.py's figures for the last checkpoint
CELL_LOG = 'cell.log'            # in a cell folder: its commands' output when cells run side by side


@dataclasses.dataclass
class Cell:
    variant: str
    seed: int
    folder: str             # the cell's log_dir
    mode: str
    train_command: list
    val_command: list
    spec: dict

    @property
    def name(self):
        return f'{self.variant} seed {self.seed}'

    @property
    def result_path(self):
        return os.path.join(self.folder, CELL_RESULT)


def repo_path(path):
    """A path as the commands give it: relative to the repository root (where the launchers run)
    when it lies inside it, else absolute."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path, REPO_ROOT)
    return path if relative.startswith('..') else relative


def path_override(key, path):
    """KEY=PATH for --opts, quoted only where a bare PATH would not read back as that string."""
    bare = f'{key}={path}'
    return bare if parse_overrides([bare])[key] == path else f'{key}={path!r}'


def file_sha256(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def resolved_config(config, mode, flags, teacher, opts):
    """The config train.py runs with these arguments (its own parser and resolution); GridError for
    anything train.py would reject."""
    parser = train_args_parser()

    def reject(message):
        raise GridError(message)
    parser.error = reject
    argv = ['--config', config, '--mode', mode, *flags, *(['--teacher', teacher] if teacher else []),
            '--opts', *opts]
    return resolve_train_config(parser.parse_args(argv), parser)


def teacher_of(variant, seed, cells, external):
    """(checkpoint, identity for the spec) of a cell's teacher; (None, None) without one."""
    if variant.teacher is None:
        return None, None
    if external is not None and variant.teacher == RGB_TEACHER:
        return external['file'], external
    taught_by = cells[variant.teacher, seed]
    checkpoint = rd.checkpoint_path(rd.run_dir(taught_by.folder, taught_by.mode), rd.LAST)
    # The teacher cell is checked as a cell of its own; a change there reruns this cell too (check_cells).
    return checkpoint, {'cell': taught_by.name}


def plan_cells(config, order, variants, seeds, out, opts, teacher_file=None):
    """Every cell of the grid, seed by seed in `order`, with its commands and spec."""
    external = None if teacher_file is None else {'file': os.path.abspath(teacher_file),
                                                  'sha256': file_sha256(teacher_file)}
    cells = {}
    for seed in seeds:
        for name in order:
            variant = variants[name]
            folder = os.path.join(os.path.abspath(out), name, f'seed{seed}')
            cell_opts = [*opts, *variant.opts, f'seed={seed}', path_override('log_dir', repo_path(folder))]
            teacher_checkpoint, teacher = teacher_of(variant, seed, cells, external)
            try:
                cfg = resolved_config(os.path.abspath(config), variant.mode, list(variant.flags),
                                      teacher_checkpoint, cell_opts)
            except (GridError, ConfigError) as e:
                raise GridError(f"variant '{name}': {e}") from None
            if variant.mode == 'student' and teacher is None and (kl_term_on(cfg) or feature_term_on(cfg)):
                raise GridError(f"variant '{name}' distils (distillation_alpha {cfg.distillation_alpha}, "
                                f"distillation_beta {cfg.distillation_beta}) but names no teacher variant")
            spec = json.loads(json.dumps({
                'config': repo_path(config), 'variant': name, 'mode': variant.mode,
                'flags': list(variant.flags), 'opts': [*opts, *variant.opts], 'seed': seed, 'teacher': teacher,
                'settings': {k: v for k, v in cfg.items() if k not in GRID_KEYS}}))
            teacher_args = ['--teacher', repo_path(teacher_checkpoint)] if teacher_checkpoint else []
            train_command = ['bash', 'train.sh', repo_path(config), '--mode', variant.mode, *variant.flags,
                             *teacher_args, '--resume', 'auto', '--opts', *cell_opts]
            val_command = ['bash', 'val.sh', repo_path(config), '-e', rd.LAST, '--mode', variant.mode,
                           '--json', repo_path(os.path.join(folder, CELL_RESULT)), '--opts', *cell_opts]
            cells[name, seed] = Cell(name, seed, folder, variant.mode, train_command, val_command, spec)
    return list(cells.values())


def flatten(value, prefix=''):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(flatten(item, f'{prefix}.{key}' if prefix else key))
    return flat


def what_counts(spec, other):
    """A spec without the text of its --opts (their effect is in the resolved settings), and without
    the settings `other` lacks: a config key added to the project after a cell was run did not exist
    for that run, so it cannot have been set differently."""
    settings = {key: value for key, value in spec['settings'].items() if key in other['settings']}
    return {**{key: value for key, value in spec.items() if key != 'opts'}, 'settings': settings}


def same_spec(recorded, current):
    return what_counts(recorded, current) == what_counts(current, recorded)


def spec_difference(recorded, current):
    """The settings that differ, as 'key old -> new', at most three."""
    old, new = flatten(what_counts(recorded, current)), flatten(what_counts(current, recorded))
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k, '(unset)') != new.get(k, '(unset)')]
    said = [f"{k} {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys[:3]]
    return ', '.join(said) + (f' and {len(keys) - 3} more' if len(keys) > 3 else '')


def cell_state(cell):
    """'new', 'unfinished', 'finished', 'changed' (its recorded spec differs) or 'foreign' (its
    folder holds files but no spec), and the recorded spec."""
    spec_path = os.path.join(cell.folder, CELL_SPEC)
    if os.path.isfile(spec_path):
        with open(spec_path) as f:
            recorded = json.load(f)
        if not same_spec(recorded, cell.spec):
            return 'changed', recorded
        return ('finished' if os.path.isfile(cell.result_path) else 'unfinished'), recorded
    if os.path.isdir(cell.folder) and os.listdir(cell.folder):
        return 'foreign', None
    return 'new', None


def teacher_cell(cell):
    """The name of the cell whose checkpoint teaches this one, None without one in the grid."""
    return (cell.spec.get('teacher') or {}).get('cell')


def check_cells(cells, rerun_changed):
    """{cell name: state}; GridError for a cell that cannot be reused or continued."""
    states, changed = {}, []
    for cell in cells:
        state, recorded = cell_state(cell)
        if state == 'foreign':
            raise GridError(f"cell {cell.name}: '{cell.folder}' holds files but no {CELL_SPEC}; move them "
                            f"away or choose another --out")
        teacher = teacher_cell(cell)
        if state == 'changed':
            changed.append((cell, spec_difference(recorded, cell.spec)))
        elif state != 'new' and states.get(teacher) == 'changed':
            state = 'changed'   # its teacher is run again, so is it
            changed.append((cell, f'its teacher {teacher} changed'))
        states[cell.name] = state
    if changed and not rerun_changed:
        cell, difference = changed[0]
        others = f' (and {len(changed) - 1} more cells)' if len(changed) > 1 else ''
        raise GridError(f"cell {cell.name} was run with other settings: {difference}{others}; rerun "
                        f"changed cells with --rerun-changed (deletes them first) or choose another --out")
    return states


class CellFailed(RuntimeError):
    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def launcher_env():
    """train.sh and val.sh run `python` from PATH (PRIMKD_NO_VENV=1): make it this interpreter."""
    env = dict(os.environ, PRIMKD_NO_VENV='1')
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '')
    found = shutil.which('python', path=env['PATH'])
    if found is None or not os.path.samefile(found, sys.executable):
        raise GridError(f"the launchers would run '{found}', not this interpreter '{sys.executable}'; "
                        f"run this tool with an environment's `python`")
    return env


def run_cell(cell, env, log_path=None):
    """Trains then evaluates one cell: (0, None), or (status, why) for the first step that failed.
    With `log_path` the commands' output goes to that file instead of this process's."""
    try:
        os.makedirs(cell.folder, exist_ok=True)
        write_json(os.path.join(cell.folder, CELL_SPEC), cell.spec)
        # Without a log file, log is None: print and the commands write to this process's output.
        with open(log_path, 'a') if log_path else contextlib.nullcontext() as log:
            for command in (cell.train_command, cell.val_command):
                print('>> ' + shlex.join(command), flush=True, file=log)
                status = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log).returncode
                if status:
                    return status, (f'{command[1]} exited with status {status} (its message is '
                                    f'{"in " + log_path if log_path else "above"})')
    except OSError as e:   # the cell folder or its log could not be written: a failed cell, not a hang
        return 1, str(e)
    return 0, None


def run_grid(cells, rerun_changed=False, on_cell_done=None, jobs=1):
    """Runs every cell not finished yet, up to `jobs` at once, each as soon as its teacher cell has
    finished, in grid order otherwise; checks them all first. On a failure no new cell starts, the
    running ones finish, and CellFailed names the first that failed."""
    states = check_cells(cells, rerun_changed)
    env = launcher_env()
    start = time.perf_counter()
    labels = {cell.name: f'cell {k} of {len(cells)}: {cell.name}' for k, cell in enumerate(cells, 1)}
    finished, waiting = set(), []
    for cell in cells:
        if states[cell.name] == 'finished':
            print(f'{labels[cell.name]}: finished earlier, skipped', flush=True)
            finished.add(cell.name)
        else:
            waiting.append(cell)
    done = queue.Queue()   # (cell, status, why, start time) from the cells' threads
    running, failure = 0, None

    def work(cell, log_path, cell_start):
        done.put((cell, *run_cell(cell, env, log_path), cell_start))

    while waiting or running:
        ready = [c for c in waiting if teacher_cell(c) is None or teacher_cell(c) in finished]
        for cell in ready[:jobs - running] if failure is None else []:
            waiting.remove(cell)
            label = labels[cell.name]
            if states[cell.name] == 'changed':
                shutil.rmtree(cell.folder)
                print(f'{label}: its settings changed; deleted {cell.folder} to run it again', flush=True)
            log_path = os.path.join(cell.folder, CELL_LOG) if jobs > 1 else None
            print(f'{label} (output in {log_path})' if log_path else label, flush=True)
            threading.Thread(target=work, args=(cell, log_path, time.perf_counter()), daemon=True).start()
            running += 1
        if not running:
            break   # after a failure: what waits is not started
        cell, status, why, cell_start = done.get()
        running -= 1
        if status:
            failure = failure or CellFailed(f'{labels[cell.name]} failed: {why}; run the same command again '
                                            f'to continue', status)
            continue
        finished.add(cell.name)
        now = time.perf_counter()
        print(f'{labels[cell.name]} done in {now - cell_start:.0f} s ({now - start:.0f} s in all)', flush=True)
        if on_cell_done is not None:
            on_cell_done()
    if failure is not None:
        raise failure


def ensure_grid_dataset(cfg):
    """The grid trains on one dataset for every cell: a synthetic config's data is generated once
    (dataloader/synthetic_rooms.ensure_synthetic_dataset, from its synthetic_seed, never a cell's seed);
    any other must exist."""
    try:
        ensure_synthetic_dataset(cfg)
    except FileExistsError as e:
        raise GridError(str(e)) from None
    split = os.path.join(cfg.dataset_path, cfg.train_source)
    if not os.path.isfile(split):
        raise GridError(f"no dataset: '{split}' does not exist (config key dataset_path); prepare it as "
                        f"docs/data.md says")


def plan_grid(config, requested, seeds, out, opts, reference='cmx', teacher_file=None, variants=None):
    """(variant order, cells) of a grid; GridError for anything wrong with it, before any work."""
    variants = variants or BUILT_IN_VARIANTS
    for key in parse_overrides(opts):
        if key in GRID_KEYS:
            raise GridError(f'--opts {key}=...: the grid sets it for every cell (use --seeds, --out, --teacher)')
    for name, variant in variants.items():
        check_variant(name, variant)
    for flag, values in (('--variants', requested), ('--seeds', seeds)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise GridError(f'{flag}: {", ".join(repeated)} given more than once')
    if any(seed < 0 for seed in seeds):
        raise GridError(f'--seeds: expected integers >= 0, got {seeds}')
    if teacher_file is not None:
        if RGB_TEACHER in requested or reference == RGB_TEACHER:
            raise GridError(f'--teacher replaces the {RGB_TEACHER} cells; leave {RGB_TEACHER} out of '
                            f'--variants and --reference')
        if not os.path.isfile(teacher_file):
            raise GridError(f"--teacher: '{teacher_file}' does not exist")
    try:
        ensure_grid_dataset(load_config(config, opts))
    except ConfigError as e:
        raise GridError(str(e)) from None
    order = grid_order(requested, reference, variants, teacher_file is not None)
    return order, plan_cells(config, order, variants, seeds, out, opts, teacher_file)
