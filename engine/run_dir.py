"""Everything about a run directory `<log_dir>/<mode>/`: its file names, its lock, the
training-checkpoint schema, saving, the resume policy and the resolution of val.py's
`-e last|best|N|START-END`.

No other module spells a file name of a run directory; they ask this one.
"""
import datetime
import fcntl
import glob
import json
import math
import os
import re
import shutil
import socket

import torch

from models.weight_layouts import CheckpointError, read_checkpoint_file
from utils.io import TEMPORARY_NAME, atomic_write, temporary_path

CONFIG_FILE = 'config.py'        # the resolved config; `python -m config` reads it back
LOG_FILE = 'train.log'
METRICS_FILE = 'metrics.jsonl'   # one JSON line per epoch
TB_DIR = 'tb'                    # TensorBoard event files
LOCK_FILE = 'run.lock'           # held by the running run: its pid, host and start time
LAST, BEST = 'last', 'best'

# Training checkpoints: {'format', 'version', 'mode', 'model', 'optimizer', 'scaler', 'epoch',
# 'iteration', 'rng', 'config', 'best_miou'}. Version 1 files predate the 'version' key; version 2
# files also hold the 'scheduler' state, which is not read: the schedule is built from the config
# and the epoch (engine/optim.py), so that a resume with another nepochs gets the right one. Files
# written before the rename of role to mode say 'role'; checkpoint_mode reads either.
CHECKPOINT_FORMAT = 'primkd'
CHECKPOINT_VERSION = 3

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

def training_state(*, mode, model, optimizer, scaler, cfg, epoch, iteration, best_miou, rng_states) -> dict:
    """The training checkpoint of the schema above."""
    return {'format': CHECKPOINT_FORMAT, 'version': CHECKPOINT_VERSION, 'mode': mode,
            'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'scaler': scaler.state_dict(), 'epoch': epoch, 'iteration': iteration, 'rng': rng_states,
            'config': dict(cfg), 'best_miou': best_miou}


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
    tmp = temporary_path(path, 'link')
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


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk, a vanished folder); the files already there
    are intact."""


def save_checkpoints(directory: str, state: dict, names: list) -> None:
    """Writes `state` once, as the first of `names`, and gives it the other names. CheckpointSaveError
    names the file that could not be written and why."""
    first = checkpoint_path(directory, names[0])
    path = first
    try:
        atomic_save(state, first)
        for which in names[1:]:
            path = checkpoint_path(directory, which)
            link_or_copy(first, path)
    except OSError as e:
        raise CheckpointSaveError(f"cannot write checkpoint '{path}': {e.strerror or e}") from e


def remove_dead_temporaries(directory: str, log=print) -> None:
    """Removes the temporary files (utils.io.TEMPORARY_NAME) of writers that are no longer running:
    what a process killed during a save left. Called under the run directory's lock."""
    for name in sorted(os.listdir(directory)):
        match = TEMPORARY_NAME.fullmatch(name)
        if match and not _running(int(match.group('pid'))):
            os.remove(os.path.join(directory, name))
            log(f'removed {name}, left by process {match.group("pid")} (killed during a save)')


def _running(pid: int) -> bool:
    """Whether a process of this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


def record_epoch(directory: str, record: dict) -> None:
    """Writes an epoch's line of metrics.jsonl, keeping the lines of the epochs before it only: an
    epoch run again (after a kill, or a resume from an earlier checkpoint) replaces its line and
    those that followed, so the file never holds an epoch twice."""
    path = run_file(directory, METRICS_FILE)
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)['epoch'] < record['epoch']:
                        kept.append(line.rstrip('\n') + '\n')
                except (ValueError, KeyError, TypeError):  # a torn line of an older version's append
                    continue
    atomic_write(path, ''.join(kept) + json.dumps(record) + '\n', durable=False)


# The lock

class RunDirBusy(RuntimeError):
    """Another run holds the run directory."""


class RunLock:
    """The lock of a run directory, held by the main process from before its checks to its end: a
    second run in the same directory is refused (two would interleave train.log and metrics.jsonl
    and overwrite each other's checkpoints).

    A POSIX record lock on LOCK_FILE, which holds the holder's pid, host and start time. The kernel
    drops the lock when its process dies, however it dies, and the lock is not inherited by the
    data-loader workers a process forks; so a lock file found unlocked was left by a dead process:
    on this host it is taken over (and said so); from another host it is refused, since this host
    cannot tell whether that run still holds it (file systems that do not share locks between hosts).
    The folder is created here (with its parents); release() removes those this run created while
    they are empty (a run refused by a check leaves nothing behind)."""

    def __init__(self, directory: str, log=print):
        self.directory = directory
        self.path = run_file(directory, LOCK_FILE)
        self.created = _missing_folders(directory)
        self._fd = None
        self._claimed = False
        try:
            self._fd = self._lock()
            self._claim(log)
        except BaseException:
            self.release()
            raise

    def _lock(self) -> int:
        """An open descriptor of LOCK_FILE, locked."""
        while True:
            try:
                os.makedirs(self.directory, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # read-only, impossible (/proc), a file in the way
                raise OSError(f"cannot write in run directory '{self.directory}' (config key log_dir): "
                              f"{e.strerror or e}") from e
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder_text(_read_holder(fd))
                os.close(fd)
                if isinstance(e, (BlockingIOError, PermissionError)):
                    raise RunDirBusy(f"run directory '{self.directory}' is in use by another run ({holder}): "
                                     f"wait for it to end, or use another one with --opts log_dir=OTHER_DIR")
                raise OSError(f"cannot lock run directory '{self.directory}': {e.strerror or e}") from e
            # The previous holder removes the file when it ends: if it did so between our open and
            # our lock, we hold a lock on a file nobody else will open; take the new one.
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _claim(self, log) -> None:
        """Writes this process into the lock file, after saying whose lock it takes over."""
        previous = _read_holder(self._fd)
        if previous is not None:
            if previous and previous.get('host') != socket.gethostname():
                raise RunDirBusy(f"run directory '{self.directory}' was locked by a run on another host "
                                 f"({_holder_text(previous)}), which cannot be checked from here: if that run "
                                 f"has ended, delete '{self.path}'")
            log(f"taking over the lock of run directory '{self.directory}' from "
                f"{_holder_text(previous)}, which is no longer running")
        me = {'pid': os.getpid(), 'host': socket.gethostname(),
              'started': datetime.datetime.now().isoformat(timespec='seconds')}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(me) + '\n').encode(), 0)
        os.fsync(self._fd)
        self._claimed = True

    def release(self) -> None:
        """Ends the lock (removing LOCK_FILE if this run wrote it), and removes the folder if this
        run created it and it is empty."""
        if self._fd is not None:
            if self._claimed and os.path.exists(self.path):
                os.remove(self.path)
            os.close(self._fd)
            self._fd = None
        for folder in self.created:
            if not os.path.isdir(folder) or os.listdir(folder):
                break
            os.rmdir(folder)


def _missing_folders(directory: str) -> list:
    """The folders os.makedirs(directory) would create, deepest first."""
    missing = []
    folder = os.path.abspath(directory)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _read_holder(fd: int):
    """The holder a lock file names ({'pid', 'host', 'started'}), {} if it names none that can be
    read, None if it is empty."""
    text = os.pread(fd, 4096, 0)
    if not text:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_text(holder) -> str:
    if not holder:
        return 'a process the lock file does not name'
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}")


def lock_holder(directory: str):
    """The holder ({'pid', 'host', 'started'}) of a run directory's lock while a run on this host
    holds it, None otherwise; for a lock taken on another host, which cannot be checked from here,
    its holder. It only reads the lock file: a run starting at the same moment is not disturbed."""
    try:
        fd = os.open(run_file(directory, LOCK_FILE), os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = _read_holder(fd)
    finally:
        os.close(fd)
    if not holder:
        return None
    if holder.get('host') != socket.gethostname():
        return holder
    return holder if isinstance(holder.get('pid'), int) and _running(holder['pid']) else None


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


def last_good_checkpoint(directory: str) -> str:
    """For the message of a run that stops: where it can continue from."""
    path = find_resume_checkpoint(directory, log=lambda message: None)
    if path is None:
        return f'no checkpoint has been written in {directory} yet'
    return (f"the last good checkpoint is '{path}' (epoch {read_training_checkpoint(path)['epoch']}): "
            f"continue with --resume auto")


def restart_count() -> int:
    """How often torchrun (--max-restarts) has restarted this run's processes; 0 outside torchrun."""
    count = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    return int(count) if count.isdigit() else 0


def resume_path(resume, directory: str, log=print):
    """The checkpoint a run starts from (None: afresh). `resume`: --resume, i.e. None, 'auto' (the
    newest good checkpoint of the run directory) or a file (FileNotFoundError if it is missing).
    A process torchrun restarted continues from the newest checkpoint of the run directory,
    whatever --resume says: the run it replaces may have saved epochs since."""
    if restart_count() > 0:
        newest = find_resume_checkpoint(directory, log=log)
        if newest is not None:
            log(f'torchrun restart {restart_count()}: resuming from the newest checkpoint, {newest}')
            return newest
    if resume is None:
        return None
    if resume == 'auto':
        path = find_resume_checkpoint(directory, log=log)
        log(f'--resume auto: {path or "no checkpoint in " + directory + ", starting afresh"}')
        return path
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint '{resume}' does not exist")
    return resume


# The resume policy. A resumed run compares its config with the checkpoint's ('config'). These keys
# may differ, and so may every key starting with 'eval_': they decide how long the run lasts, how it
# is evaluated, saved and logged, and how fast it runs, not what a training step computes. The
# learning-rate schedule follows nepochs, as every start builds it from the config and the epoch
# (engine/optim.py build_scheduler). Any other change is refused unless --allow-config-change is
# given; then the run uses the new values (weights, optimizer moments and the epoch continue).
RESUME_MAY_CHANGE = frozenset({
    'nepochs', 'num_eval_imgs', 'checkpoint_step', 'checkpoint_start_epoch', 'log_dir', 'class_names',
    'num_workers', 'compile', 'channels_last', 'cudnn_benchmark', 'dist_timeout_minutes',
    'pretrained_model',  # read by a fresh start only
})
# The checkpoint's optimizer state is this optimizer's: no resume can change it.
RESUME_FIXED = frozenset({'optimizer'})


def _may_change(key: str) -> bool:
    return key in RESUME_MAY_CHANGE or key.startswith('eval_')


def config_changes(saved: dict, cfg) -> dict:
    """{key: (the checkpoint's value, this run's value)} for the keys both configs have that differ."""
    return {key: (saved[key], cfg[key]) for key in sorted(set(saved) & set(cfg)) if saved[key] != cfg[key]}


def _listed(changes: dict) -> str:
    return ', '.join(f'{key} {old!r} -> {new!r}' for key, (old, new) in changes.items())


def checkpoint_mode(ckpt: dict, default=None):
    """The mode ('teacher' | 'student') a training checkpoint says it is of: its 'mode' field, or
    the 'role' field of files written before that rename, or `default` for files without either."""
    return ckpt.get('mode', ckpt.get('role', default))


def read_resume_checkpoint(path: str, cfg, mode: str, allow_change: bool, log=print) -> dict:
    """The training checkpoint a run of `mode` resumes from, after the resume policy: CheckpointError
    if it is of the other mode, or if its config differs in a way the policy refuses."""
    ckpt = read_training_checkpoint(path)
    source = f"--resume '{path}'"
    saved_mode = checkpoint_mode(ckpt, default=mode)
    if saved_mode != mode:
        raise CheckpointError(f"{source} is a checkpoint of a {saved_mode} run, not of a {mode} run; "
                              f"resume it with --mode {saved_mode}")
    check_resume_config(ckpt.get('config', {}), cfg, ckpt['epoch'], allow_change, source, log)
    return ckpt


def check_resume_config(saved: dict, cfg, epoch: int, allow_change: bool, source: str, log=print) -> None:
    """Applies the resume policy above to a checkpoint of `epoch` epochs whose config is `saved`:
    CheckpointError naming every refused key with both values, else logs what changes. Keys only
    one of the two configs has (an earlier or a later version of the project) are logged."""
    changes = config_changes(saved, cfg)
    fixed = {key: change for key, change in changes.items() if key in RESUME_FIXED}
    if fixed:
        raise CheckpointError(f"{source}: this run changes {_listed(fixed)}, but the checkpoint's optimizer "
                              f"state is its optimizer's; start a new run with --opts log_dir=OTHER_DIR")
    others = {key: change for key, change in changes.items() if not _may_change(key)}
    if others and not allow_change:
        raise CheckpointError(f"{source}: this run changes {_listed(others)}; a resumed run may change only "
                              f"{', '.join(sorted(RESUME_MAY_CHANGE))} and eval_*: resume with the "
                              f"checkpoint's values, or pass --allow-config-change to train on with these")
    if cfg.nepochs < epoch:
        raise CheckpointError(f"{source} has trained {epoch} epochs, more than nepochs={cfg.nepochs}")
    allowed = {key: change for key, change in changes.items() if _may_change(key)}
    if allowed:
        log(f'resuming with changed settings: {_listed(allowed)}')
    if others:
        log(f'resuming with changed settings (--allow-config-change): {_listed(others)}')
    if set(cfg) - set(saved):
        log(f"keys the checkpoint's config does not have, taken from this config: "
            f"{', '.join(sorted(set(cfg) - set(saved)))}")
    if set(saved) - set(cfg):
        log(f"keys of the checkpoint's config this version does not know, ignored: "
            f"{', '.join(sorted(set(saved) - set(cfg)))}")


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
