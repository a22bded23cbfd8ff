"""Writing files so that an interrupted process never leaves a torn one, and checking before any
work that they can be written."""
import json
import os
import re

# `.NAME.KIND-PID`: the temporary files of atomic_write ('tmp'), of engine/run_dir.link_or_copy
# ('link') and of check_output_folder ('probe'). The pid tells a dead writer's leftovers (removed
# at the next start of a run, engine/run_dir.py) from a live writer's.
TEMPORARY_NAME = re.compile(r'\..+\.(?:tmp|link|probe)-(?P<pid>\d+)')


def temporary_path(path: str, kind: str = 'tmp') -> str:
    """The temporary name of `path` (in its folder) for this process."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}.{kind}-{os.getpid()}')


def atomic_write(path: str, content, durable: bool = True) -> None:
    """Writes `content` (bytes, str, or a function taking the open binary file) to a temporary file
    in the same folder and renames it over `path`: a process killed at any moment leaves the old
    file or the new one, never a part. `durable` also fsyncs file and folder, so the rename
    survives a power cut (checkpoints); per-image outputs skip that cost."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temporary_path(path)
    try:
        with open(tmp, 'wb') as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if durable:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def check_output_folder(folder: str) -> None:
    """Makes sure files can be written in `folder` before the work that produces them starts:
    creates it and then a probe file in it, removed at once. Asking os.access is not enough: root
    passes it everywhere, and it knows nothing of read-only or virtual file systems (/proc).
    Raises OSError saying what failed."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f'cannot create its folder: {e}') from e
    probe = temporary_path(os.path.join(folder, 'write-check'), 'probe')
    try:
        with open(probe, 'wb'):
            pass
        os.remove(probe)
    except OSError as e:
        raise OSError(f"cannot write in its folder '{folder}': {e.strerror or e}") from e


def check_output_file(path: str) -> None:
    """check_output_folder for the folder of `path`; OSError also if `path` is a folder."""
    if os.path.isdir(path):
        raise OSError('it is a folder, not a file path')
    check_output_folder(os.path.dirname(os.path.abspath(path)))


def write_json(path: str, value, indent: int = 2) -> None:
    """`value` as a JSON file, written atomically (a reader never sees half a file)."""
    atomic_write(path, json.dumps(value, indent=indent) + '\n', durable=False)
