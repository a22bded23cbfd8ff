"""Everything about a run directory `<log_dir>/<mode>/`: its file names, the training-checkpoint
schema, saving, the resume policy and the resolution of val.py's `-e last|best|N|START-END`.

No other module spells a file name of a run directory; they ask this one.
"""
import glob
import math
import os
import re
import shutil

import torch
from easydict import EasyDict

from models.distill import feature_term_on
from models.weight_layouts import CheckpointError, read_checkpoint_file
from utils.io import atomic_write

CONFIG_FILE = 'config.py'        # the resolved config; `python -m config` reads it back
LOG_FILE = 'train.log'
METRICS_FILE = 'metrics.jsonl'   # one JSON line per epoch
TB_DIR = 'tb'                    # TensorBoard event files
LAST, BEST = 'last', 'best'

# Training checkpoints: {'format', 'version', 'role', 'model', 'optimizer', 'scheduler', 'scaler',
# 'epoch', 'iteration', 'rng', 'config', 'best_miou'}. Version 1 files predate the 'version' key.
CHECKPOINT_FORMAT = 'primkd'
CHECKPOINT_VERSION = 2

_EPOCH_FILE = re.compile(r'epoch-(\d+)\.pth')
_EPOCH_RANGE = re.compile(r'(\d+)-(\d*)')


def run_dir(log_dir: str, mode: str) -> str:
    """The run directory of a mode ('teacher' or 'student') under a config's log_dir."""
    return os.path.join(log_dir, mode)


def run_file(directory: str, name: str) -> str:
    """A file of a run directory, by one of the names above (CONFIG_FILE, LOG_FILE, ...)."""
    return os.path.join(directory, name)


def checkpoint_path(directory: str, which) -> str:
    """The checkpoint file `which` names: LAST, BEST or an epoch number."""
    if isinstance(which, int) or str(which).isdigit():
        return os.path.join(directory, f'epoch-{int(which)}.pth')
    if which not in (LAST, BEST):
        raise ValueError(f"unknown checkpoint '{which}' (last, best or an epoch number)")
    return os.path.join(directory, f'{which}.pth')


def checkpoint_files(directory: str) -> list:
    """Every checkpoint file of a run directory, sorted by name."""
    return sorted(glob.glob(os.path.join(directory, '*.pth')))


def epoch_files(directory: str) -> dict:
    """{epoch: path} of the epoch-N.pth files of a run directory."""
    found = {}
    for path in glob.glob(os.path.join(directory, 'epoch-*.pth')):
        match = _EPOCH_FILE.fullmatch(os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    return found


def checkpoint_name(path: str) -> str:
    """'best', 'last', 'epoch-7', ...: a checkpoint's name without folder and extension."""
    return os.path.splitext(os.path.basename(path))[0]


# Saving

def training_state(*, role, model, optimizer, scheduler, scaler, cfg, epoch, iteration, best_miou,
                   rng_states) -> dict:
    """The training checkpoint of the schema above."""
    return {'format': CHECKPOINT_FORMAT, 'version': CHECKPOINT_VERSION, 'role': role,
            'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'epoch': epoch,
            'iteration': iteration, 'rng': rng_states, 'config': dict(cfg), 'best_miou': best_miou}


def checkpoints_to_write(epoch: int, improved: bool, cfg) -> list:
    """Which checkpoints an epoch writes: always LAST, BEST when validation improved, and epoch N
    every checkpoint_step epochs from checkpoint_start_epoch."""
    names = [LAST] + ([BEST] if improved else [])
    if epoch >= cfg.checkpoint_start_epoch and epoch % cfg.checkpoint_step == 0:
        names.append(epoch)
    return names


def atomic_save(obj, path: str) -> None:
    """torch.save, atomically (utils.io.atomic_write): a crash leaves the old file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def link_or_copy(source: str, path: str) -> None:
    """Gives `source` a second name atomically: a hard link where the file system allows it (no
    second copy of a 1.6 GB checkpoint), else a copy. The first name is later replaced by rename,
    never rewritten in place, so the two names never change together."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f'.{os.path.basename(path)}.link-{os.getpid()}')
    try:
        os.link(source, tmp)
    except OSError:
        with open(source, 'rb') as src:
            atomic_write(path, lambda f: shutil.copyfileobj(src, f, 16 << 20))
        return
    try:
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def save_checkpoints(directory: str, state: dict, names: list) -> None:
    """Writes `state` once, as the first of `names`, and gives it the other names."""
    first = checkpoint_path(directory, names[0])
    atomic_save(state, first)
    for which in names[1:]:
        link_or_copy(first, checkpoint_path(directory, which))


# Reading and resuming

def read_training_checkpoint(path: str) -> dict:
    """Loads a training checkpoint of this project; raises CheckpointError (a ValueError) naming the
    file if it cannot be read or is not one."""
    # Memory-mapped: --resume auto opens every checkpoint of a run to find the newest.
    ckpt = read_checkpoint_file(path, mmap=True)
    if ckpt.get('format') != CHECKPOINT_FORMAT or 'optimizer' not in ckpt:
        raise CheckpointError(f"'{path}' is not a training checkpoint of this project (model weights "
                              f"alone, e.g. official ones, cannot resume a run; use --teacher or val.py)")
    if ckpt.get('version', 1) > CHECKPOINT_VERSION:
        raise CheckpointError(f"'{path}' is a version {ckpt['version']} training checkpoint; this "
                              f"version of the project reads up to version {CHECKPOINT_VERSION}")
    return ckpt


def find_resume_checkpoint(directory: str, log=print):
    """The newest readable checkpoint of a run directory (by epoch, then iteration), or None.

    Unreadable files (e.g. a copy torn by a crash outside this project's atomic writer) are reported
    and skipped, so a run resumes from the last good state."""
    best = None
    for path in checkpoint_files(directory):
        try:
            ckpt = read_training_checkpoint(path)
        except ValueError as e:
            log(f'skipping {e}')
            continue
        key = (ckpt['epoch'], ckpt['iteration'])
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else best[1]


def resume_path(resume, directory: str, log=print):
    """The checkpoint --resume names (None: start afresh); FileNotFoundError for a missing file."""
    if resume is None:
        return None
    if resume == 'auto':
        path = find_resume_checkpoint(directory, log=log)
        log(f'--resume auto: {path or "no checkpoint in " + directory + ", starting afresh"}')
        return path
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint '{resume}' does not exist")
    return resume


def resume_conflicts(saved_cfg: dict, cfg) -> list:
    """Settings that shape the trained parameters or the optimizer state and differ from those of
    the run a checkpoint comes from (its weights load, but its optimizer state cannot)."""
    saved = EasyDict(saved_cfg)
    conflicts = [f'{key} {saved[key]!r} -> {cfg[key]!r}' for key in ('optimizer',) if saved[key] != cfg[key]]
    if feature_term_on(saved) != feature_term_on(cfg):
        conflicts.append('the feature term (distillation_beta, select) is '
                         + ('off' if feature_term_on(saved) else 'on') + ' now')
    elif feature_term_on(cfg):
        conflicts += [f'{key} {saved[key]!r} -> {cfg[key]!r}' for key in ('losses', 'mask_single')
                      if saved[key] != cfg[key]]
    return conflicts


def refuse_overwrite(directory: str) -> None:
    """A fresh run never overwrites the checkpoints of another one."""
    if checkpoint_files(directory):
        raise FileExistsError(f"run directory '{directory}' already holds checkpoints: continue it with "
                              f"--resume auto, or start a new run with --opts log_dir=OTHER_DIR")


# Evaluation: what -e names

def model_checkpoint(folder: str, mode: str) -> str:
    """best.pth, else last.pth, of a run directory or of its <mode>/ sub-folder (a log_dir)."""
    for directory in (folder, run_dir(folder, mode)):
        for which in (BEST, LAST):
            if os.path.isfile(checkpoint_path(directory, which)):
                return checkpoint_path(directory, which)
    raise ValueError(f"{folder}: the folder holds no best.pth or last.pth (nor its {mode}/ sub-folder)")


def resolve_one(value: str, directory: str, mode: str) -> list:
    """The checkpoint files one -e value names, in epoch order; ValueError if there are none."""
    if os.path.isfile(value):
        return [value]
    if os.path.isdir(value):
        try:
            return [model_checkpoint(value, mode)]
        except ValueError as e:
            raise ValueError(f'-e {e}') from None
    where = f"run directory '{directory}' (<log_dir>/{mode}; set log_dir with --opts log_dir=...)"
    if value in (LAST, BEST) or value.isdigit():
        path = checkpoint_path(directory, value)
        if not os.path.isfile(path):
            available = [os.path.basename(p) for p in checkpoint_files(directory)]
            raise ValueError(f"-e {value}: no {os.path.basename(path)} in the {where}; it holds "
                             f"{', '.join(available) if available else 'no checkpoints'}")
        return [path]
    match = _EPOCH_RANGE.fullmatch(value)
    if match:
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else math.inf
        if start > end:
            raise ValueError(f'-e {value}: the range starts after it ends')
        epochs = epoch_files(directory)
        chosen = [epochs[n] for n in sorted(epochs) if start <= n <= end]
        if not chosen:
            held = ', '.join(map(str, sorted(epochs))) if epochs else 'none'
            raise ValueError(f"-e {value}: no epoch-N.pth with N in that range in the {where} "
                             f"(epochs held: {held})")
        return chosen
    raise ValueError(f"checkpoint '{value}' does not exist (-e takes a checkpoint file, a run "
                     f"directory, last, best, an epoch N or a range START-END)")


def resolve_checkpoints(values, directory: str, mode: str) -> list:
    """Every checkpoint file the -e values name, in order, each once (absolute paths)."""
    paths = []
    for value in (v.strip() for arg in values for v in arg.split(',')):
        if value:
            paths += [os.path.abspath(p) for p in resolve_one(value, directory, mode)]
    return list(dict.fromkeys(paths))
