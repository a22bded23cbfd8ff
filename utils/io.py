"""Writing files so that an interrupted process never leaves a torn one."""
import json
import os


def atomic_write(path: str, content, durable: bool = True) -> None:
    """Writes `content` (bytes, str, or a function taking the open binary file) to a temporary file
    in the same folder and renames it over `path`: a process killed at any moment leaves the old
    file or the new one, never a part. `durable` also fsyncs file and folder, so the rename
    survives a power cut (checkpoints); per-image outputs skip that cost."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
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


def check_output_file(path: str) -> None:
    """Makes sure a file can be written at `path` before the work that produces it starts: creates
    its folder; raises OSError naming the problem if that fails, the path is a folder, or the folder
    is not writable."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OSError(f'cannot create its folder: {e}') from e
    if os.path.isdir(path) or not os.access(folder, os.W_OK):
        raise OSError('not a writable file path')


def write_json(path: str, value, indent: int = 2) -> None:
    """`value` as a JSON file, written atomically (a reader never sees half a file)."""
    atomic_write(path, json.dumps(value, indent=indent) + '\n', durable=False)
