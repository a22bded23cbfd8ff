"""Runs a grid of named variants over seeds and compares them with a reference variant.

    python tools/ablate.py -c config/demo.py --variants cmx primkd kl_only feat_only --seeds 1 2 3
    python tools/ablate.py -c config/nyu_b2.py --variants primkd --teacher pretrained/pre/nyu-rgb.pth

A variant is a mode (teacher or student), train.py flags, config overrides (--opts) and optionally the
variant whose same-seed cell is its teacher. Built in:

    rgb_teacher      teacher mode (the RGB-only SegFormer)
    rgb_teacher_b1   rgb_teacher with backbone=mit_b1
    cmx              student, --distillation_alpha 0 --distillation_beta 0 (the CMX baseline, no teacher)
    primkd           student with the paper's settings (the config's), teacher rgb_teacher
    kl_only          primkd with --distillation_beta 0
    feat_only        primkd with --distillation_alpha 0
    mask_hint        primkd with --mask_single mask_hint
    rgbx_teacher     student with teacher_modality=rgbx, teacher cmx
    wide_teacher     student with teacher_backbone=mit_b1, teacher rgb_teacher_b1
    kl_confident     primkd with distillation_kl_confidence=0.9 (not in the paper: KL only where the
                     teacher's top class probability is at least 0.9)
    kd, cwd, dist    the standard logit distillers in place of PrimKD's KL, without the feature term
                     (compare them with kl_only), each with its paper's weight and temperature
                     (models/distill.py, LOGIT_LOSSES): KD (Hinton, tau 4), CWD (Shu, tau 4, weight 3),
                     DIST (Huang, tau 1)

--variants-file FILE adds variants: a JSON file holding, or a Python file defining VARIANTS as, a dict
name -> {"mode": "teacher" | "student" (default student), "flags": [train.py flags], "opts":
["KEY=VALUE", ...], "teacher": variant name or null}, e.g.

    {"half_kl": {"flags": ["--distillation_alpha", "0.5"], "teacher": "rgb_teacher"}}

A cell is one variant and one seed: a real `bash train.sh CONFIG --mode M ... --resume auto --opts
seed=N log_dir=DIR/<variant>/seed<N>` run, then `bash val.sh CONFIG -e last --mode M --json ...` on
its final checkpoint (never the best one: the validation split is the test split). A student's teacher
is the last checkpoint of its teacher variant's cell of the same seed, or with --teacher PATH that file
for every variant taught by rgb_teacher (then no rgb_teacher cells are trained). Cells run seed by
seed, teachers first; the reference variant (--reference, default cmx) is always part of the grid.

Everything goes under --out DIR (default log/ablate/<config name>/): DIR/<variant>/seed<N>/ is a cell's
log_dir (its run directory is DIR/<variant>/seed<N>/<mode>/) and holds cell.json (what the cell is:
config, flags, opts, seed, resolved config, teacher) and result.json (val.py's figures).
DIR/table.md and DIR/results.json hold the comparison: per variant the mean ± sd of test mIoU over
the seeds and every seed's figure, the paired difference to the reference with a 95% Student-t
interval, the per-class IoU differences, and the commands that reproduce each cell.

Running the same command again skips finished cells and continues unfinished ones. A cell whose
recorded cell.json differs from what the command asks for now is refused, naming the difference;
--rerun-changed deletes such cells and runs them again.
"""
import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import runpy
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import numpy
import scipy
import scipy.stats
import timm
import torch
import torchvision

import train
from config import REPO_ROOT, ConfigError, add_config_args, load_config, parse_overrides
from engine import run_dir as rd
from tools.synthetic_rooms import ensure_synthetic_dataset
from models.distill import LOGIT_LOSSES, feature_term_on, kl_term_on
from utils.io import atomic_write, write_json

RGB_TEACHER = 'rgb_teacher'      # the variant --teacher PATH stands in for
CELL_SPEC = 'cell.json'          # in a cell folder: what the cell is
CELL_RESULT = 'result.json'      # in a cell folder: val.py's figures for the last checkpoint
RESULTS_FILE = 'results.json'
TABLE_FILE = 'table.md'
# Flags and config keys the grid sets itself, per cell.
GRID_FLAGS = ('--mode', '--teacher', '--resume', '--config', '-c', '--opts', '--stop-after-epoch')
GRID_KEYS = ('seed', 'log_dir', 'teacher_checkpoint')


@dataclasses.dataclass(frozen=True)
class Variant:
    mode: str = 'student'
    flags: tuple = ()
    opts: tuple = ()
    teacher: str = None   # the variant whose same-seed cell (its last checkpoint) teaches this one


BUILT_IN_VARIANTS = {
    RGB_TEACHER: Variant('teacher'),
    'rgb_teacher_b1': Variant('teacher', opts=('backbone=mit_b1',)),
    'cmx': Variant(flags=('--distillation_alpha', '0', '--distillation_beta', '0')),
    'primkd': Variant(teacher=RGB_TEACHER),
    'kl_only': Variant(flags=('--distillation_beta', '0'), teacher=RGB_TEACHER),
    'feat_only': Variant(flags=('--distillation_alpha', '0'), teacher=RGB_TEACHER),
    'mask_hint': Variant(flags=('--mask_single', 'mask_hint'), teacher=RGB_TEACHER),
    'rgbx_teacher': Variant(opts=('teacher_modality=rgbx',), teacher='cmx'),
    'wide_teacher': Variant(opts=('teacher_backbone=mit_b1',), teacher='rgb_teacher_b1'),
    'kl_confident': Variant(opts=('distillation_kl_confidence=0.9',), teacher=RGB_TEACHER),
    **{name: Variant(flags=('--distillation_alpha', f'{LOGIT_LOSSES[name].weight:g}', '--distillation_beta', '0'),
                     opts=(f'distillation_logit_loss={name}',), teacher=RGB_TEACHER)
       for name in ('kd', 'cwd', 'dist')},
}


class GridError(ValueError):
    """Bad input to the grid, said in one line before any cell runs."""


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


# Variants

def load_variants_file(path):
    """{name: Variant} from a JSON file or a Python file defining VARIANTS."""
    if not os.path.isfile(path):
        raise GridError(f"--variants-file '{path}' does not exist")
    try:
        if path.endswith('.py'):
            raw = runpy.run_path(path).get('VARIANTS')
        else:
            with open(path) as f:
                raw = json.load(f)
    except Exception as e:  # a user's file: any error in it is reported as one line
        raise GridError(f"--variants-file '{path}' cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise GridError(f"--variants-file '{path}': expected a dict name -> {{mode, flags, opts, teacher}}"
                        + (' named VARIANTS' if path.endswith('.py') else ''))
    variants = {}
    for name, fields in raw.items():
        where = f"--variants-file '{path}', variant '{name}'"
        if name in BUILT_IN_VARIANTS:
            raise GridError(f'{where}: the name is built in; choose another')
        if not isinstance(fields, dict) or set(fields) - {'mode', 'flags', 'opts', 'teacher'}:
            raise GridError(f'{where}: expected a dict with keys among mode, flags, opts, teacher')
        if fields.get('mode', 'student') not in ('teacher', 'student'):
            raise GridError(f"{where}: mode must be 'teacher' or 'student', got {fields['mode']!r}")
        for key in ('flags', 'opts'):
            value = fields.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise GridError(f'{where}: {key} must be a list of strings, got {value!r}')
        if not isinstance(fields.get('teacher'), (str, type(None))):
            raise GridError(f"{where}: teacher must be a variant name or null, got {fields['teacher']!r}")
        variants[name] = Variant(fields.get('mode', 'student'), tuple(fields.get('flags', [])),
                                 tuple(fields.get('opts', [])), fields.get('teacher'))
    return variants


def check_variant(name, variant):
    """The grid sets the mode, teacher, resume, log_dir and seed of every cell itself."""
    if variant.mode == 'teacher' and variant.teacher is not None:
        raise GridError(f"variant '{name}': a teacher-mode variant has no teacher")
    for flag in variant.flags:
        if flag.split('=')[0] in GRID_FLAGS:
            raise GridError(f"variant '{name}': flag {flag} is set by the grid (use the variant's mode, "
                            f"teacher and opts)")
    for key in parse_overrides(list(variant.opts)):
        if key in GRID_KEYS:
            raise GridError(f"variant '{name}': --opts {key}=... is set by the grid for every cell")


def grid_order(requested, reference, variants, external_teacher):
    """The variants the grid runs, each after its teacher: teacher-mode variants first, then the
    reference, then the others as requested. `external_teacher`: rgb_teacher is a file, not cells."""
    def dependency_order(names):
        order = []

        def visit(name, chain):
            if name in chain:
                raise GridError(f"variant '{name}': its teachers form a cycle ({' -> '.join(chain + [name])})")
            if name not in variants:
                raise GridError(f"unknown variant '{name}' (known: {', '.join(variants)}; "
                                f"more with --variants-file)")
            teacher = variants[name].teacher
            if teacher is not None and not (external_teacher and teacher == RGB_TEACHER):
                visit(teacher, chain + [name])
            if name not in order:
                order.append(name)

        for name in names:
            visit(name, [])
        return order

    closure = dependency_order([reference, *requested])
    teachers = [name for name in closure if variants[name].mode == 'teacher']
    return dependency_order(teachers + [reference] + closure)


# Cells

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
    parser = train.get_args_parser()

    def reject(message):
        raise GridError(message)
    parser.error = reject
    argv = ['--config', config, '--mode', mode, *flags, *(['--teacher', teacher] if teacher else []),
            '--opts', *opts]
    return train.resolve_config(parser.parse_args(argv), parser)


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


def check_cells(cells, rerun_changed):
    """{cell name: state}; GridError for a cell that cannot be reused or continued."""
    states, changed = {}, []
    for cell in cells:
        state, recorded = cell_state(cell)
        if state == 'foreign':
            raise GridError(f"cell {cell.name}: '{cell.folder}' holds files but no {CELL_SPEC}; move them "
                            f"away or choose another --out")
        teacher = (cell.spec.get('teacher') or {}).get('cell')
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


def run_grid(cells, rerun_changed=False, on_cell_done=None):
    """Runs every cell not finished yet, in order; checks them all first."""
    states = check_cells(cells, rerun_changed)
    env = launcher_env()
    start = time.perf_counter()
    for k, cell in enumerate(cells, 1):
        label = f'cell {k} of {len(cells)}: {cell.name}'
        if states[cell.name] == 'finished':
            print(f'{label}: finished earlier, skipped', flush=True)
            continue
        if states[cell.name] == 'changed':
            shutil.rmtree(cell.folder)
            print(f'{label}: its settings changed; deleted {cell.folder} to run it again', flush=True)
        print(f'{label}', flush=True)
        cell_start = time.perf_counter()
        os.makedirs(cell.folder, exist_ok=True)
        write_json(os.path.join(cell.folder, CELL_SPEC), cell.spec)
        for command in (cell.train_command, cell.val_command):
            print('>> ' + shlex.join(command), flush=True)
            status = subprocess.run(command, cwd=REPO_ROOT, env=env).returncode
            if status:
                raise CellFailed(f'{label} failed: {command[1]} exited with status {status} (its message is '
                                 f'above); run the same command again to continue', status)
        now = time.perf_counter()
        print(f'{label} done in {now - cell_start:.0f} s ({now - start:.0f} s in all)', flush=True)
        if on_cell_done is not None:
            on_cell_done()


# Figures

def read_results(cells):
    """{(variant, seed): val.py's figures} of the finished cells."""
    results = {}
    for cell in cells:
        if os.path.isfile(cell.result_path):
            with open(cell.result_path) as f:
                results[cell.variant, cell.seed] = json.load(f)
    return results


def paired_interval(values, reference, confidence=0.95):
    """Mean of the paired differences values[i] - reference[i] and its Student-t interval
    mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n); the bounds are None below two pairs."""
    differences = [v - r for v, r in zip(values, reference, strict=True)]
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, None, None
    half = (scipy.stats.t.ppf((1 + confidence) / 2, len(differences) - 1)
            * statistics.stdev(differences) / math.sqrt(len(differences)))
    return mean, mean - half, mean + half


def seed_statistics(per_seed):
    """{'seeds': {seed: value}, 'n', 'mean', 'sd'}; mean None without seeds, sd None below two."""
    values = list(per_seed.values())
    return {'seeds': {str(s): v for s, v in per_seed.items()}, 'n': len(values),
            'mean': statistics.mean(values) if values else None,
            'sd': statistics.stdev(values) if len(values) > 1 else None}


def summarise(results, cells, order, reference):
    """Every figure of the comparison, in percent, from read_results(cells)."""
    seeds = list(dict.fromkeys(cell.seed for cell in cells))
    class_names = next(iter(results.values()))['class_names'] if results else []
    reference_results = {s: results[reference, s] for s in seeds if (reference, s) in results}
    summary = {}
    for name in order:
        mine = {s: results[name, s] for s in seeds if (name, s) in results}
        entry = {'miou': seed_statistics({s: 100 * r['miou'] for s, r in mine.items()}),
                 'pixel_acc': seed_statistics({s: 100 * r['pixel_acc'] for s, r in mine.items()})}
        paired = [s for s in mine if s in reference_results]
        if name != reference and paired:
            mean, low, high = paired_interval([100 * mine[s]['miou'] for s in paired],
                                              [100 * reference_results[s]['miou'] for s in paired])
            entry['difference'] = {'seeds': paired, 'mean': mean, 'low': low, 'high': high}
            entry['class_iou_difference'] = {}
            for c, class_name in enumerate(class_names):
                both = [(mine[s]['iou'][c], reference_results[s]['iou'][c]) for s in paired]
                both = [100 * (a - b) for a, b in both if a is not None and b is not None]
                entry['class_iou_difference'][class_name] = statistics.mean(both) if both else None
        summary[name] = entry
    return summary, class_names


def figure(value, signed=False):
    if value is None:
        return '–'
    return f'{value:+.1f}' if signed else f'{value:.1f}'


def markdown_tables(summary, class_names, order, variants, reference, seeds, config):
    """The comparison as Markdown: one table of mIoU, one of per-class IoU differences."""
    lines = [f'Test mIoU (%) of the last checkpoint, {config}, seeds {", ".join(map(str, seeds))}; '
             f'differences are paired by seed, to {reference}, with a 95% Student-t interval.', '',
             '| variant | mode | mIoU mean ± sd | ' + ''.join(f'seed {s} | ' for s in seeds)
             + f'Δ vs {reference} | 95% interval |',
             '|---|---|---|' + '---|' * len(seeds) + '---|---|']
    for name in order:
        miou, difference = summary[name]['miou'], summary[name].get('difference')
        spread = f'{figure(miou["mean"])} ± {figure(miou["sd"])}' if miou['sd'] is not None else figure(miou['mean'])
        per_seed = ''.join(f'{figure(miou["seeds"].get(str(s)))} | ' for s in seeds)
        if name == reference:
            compared = '(reference) | |'
        elif difference is None or difference['low'] is None:
            compared = f'{figure(difference and difference["mean"], True)} | – |'
        else:
            compared = (f'{figure(difference["mean"], True)} | '
                        f'[{figure(difference["low"], True)}, {figure(difference["high"], True)}] |')
        lines.append(f'| {name} | {variants[name].mode} | {spread} | {per_seed}{compared}')
    lines += ['', f'Per-class IoU difference to {reference} (points, mean over the paired seeds).', '',
              '| variant | ' + ' | '.join(class_names) + ' |',
              '|---|' + '---|' * len(class_names)]
    for name in order:
        per_class = summary[name].get('class_iou_difference')
        if per_class is not None:
            lines.append(f'| {name} | ' + ' | '.join(figure(per_class[c], True) for c in class_names) + ' |')
    return '\n'.join(lines) + '\n'


def git_version():
    """The commit of the repository, with -dirty for uncommitted changes; None outside git."""
    try:
        return subprocess.run(['git', 'describe', '--always', '--dirty', '--abbrev=40'], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def versions():
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ['cpu']
    return {'python': platform.python_version(), 'torch': torch.__version__,
            'torchvision': torchvision.__version__, 'timm': timm.__version__, 'numpy': numpy.__version__,
            'scipy': scipy.__version__, 'platform': platform.platform(), 'devices': devices,
            'git': git_version()}


def grid_record(config, opts, seeds, teacher_file, out):
    """What a grid was asked to run, for results.json."""
    return {'config': repo_path(config), 'opts': opts, 'seeds': seeds,
            'teacher_file': teacher_file and os.path.abspath(teacher_file), 'out': out}


def write_report(cells, order, variants, reference, out, grid):
    """DIR/results.json and DIR/table.md from the finished cells; returns the Markdown."""
    results = read_results(cells)
    summary, class_names = summarise(results, cells, order, reference)
    table = markdown_tables(summary, class_names, order, variants, reference, grid['seeds'], grid['config'])
    record = {**grid, 'reference': reference, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'versions': versions(), 'units': 'mIoU, IoU and pixel accuracy in percent',
              'class_names': class_names,
              'variants': {name: {**dataclasses.asdict(variants[name]), **summary[name]} for name in order},
              'cells': [{'variant': cell.variant, 'seed': cell.seed, 'folder': cell.folder,
                         'finished': (cell.variant, cell.seed) in results,
                         'commands': [shlex.join(cell.train_command), shlex.join(cell.val_command)]}
                        for cell in cells]}
    write_json(os.path.join(out, RESULTS_FILE), record)
    atomic_write(os.path.join(out, TABLE_FILE), table, durable=False)
    return table


# The grid from the command line

def check_dataset(cfg):
    """The grid trains on one dataset for every cell: a synthetic config's data is generated once
    (tools/synthetic_rooms.ensure_synthetic_dataset, from its synthetic_seed, never a cell's seed);
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
        check_dataset(load_config(config, opts))
    except ConfigError as e:
        raise GridError(str(e)) from None
    order = grid_order(requested, reference, variants, teacher_file is not None)
    return order, plan_cells(config, order, variants, seeds, out, opts, teacher_file)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument('--variants', nargs='+', default=['cmx', 'primkd'], metavar='NAME',
                        help='variants to compare (default: %(default)s)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[1, 2, 3], metavar='N',
                        help='seeds, one cell per variant and seed (default: %(default)s)')
    parser.add_argument('--teacher', metavar='PATH',
                        help=f'teacher checkpoint for the variants taught by {RGB_TEACHER} (then no '
                             f'{RGB_TEACHER} cells are trained)')
    parser.add_argument('--out', metavar='DIR', help='output folder (default: log/ablate/<config name>/)')
    parser.add_argument('--reference', default='cmx', metavar='NAME',
                        help='the variant the others are compared with (default: %(default)s)')
    parser.add_argument('--variants-file', metavar='FILE', help='more variants (JSON or Python, see above)')
    parser.add_argument('--rerun-changed', action='store_true',
                        help='delete and rerun cells whose recorded settings differ from this command')
    return parser


def main(args, parser):
    config_name = os.path.splitext(os.path.basename(args.config))[0]
    out = os.path.abspath(args.out or os.path.join(REPO_ROOT, 'log', 'ablate', config_name))
    try:
        variants = {**BUILT_IN_VARIANTS, **(load_variants_file(args.variants_file) if args.variants_file else {})}
        order, cells = plan_grid(args.config, args.variants, args.seeds, out, args.opts, args.reference,
                                 args.teacher, variants)
    except GridError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    grid = grid_record(args.config, args.opts, args.seeds, args.teacher, out)

    def report():
        return write_report(cells, order, variants, args.reference, out, grid)
    try:
        run_grid(cells, args.rerun_changed, on_cell_done=report)
    except GridError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    except CellFailed as e:
        parser.exit(e.status, f'{parser.prog}: error: {e}\n')
    except KeyboardInterrupt:
        parser.exit(130, f'\n{parser.prog}: interrupted; run the same command again to continue\n')
    print('\n' + report())
    print(f'figures in {os.path.join(out, RESULTS_FILE)} and {os.path.join(out, TABLE_FILE)}')


if __name__ == '__main__':
    parser = get_args_parser()
    main(parser.parse_args(), parser)
