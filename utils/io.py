"""Writing files so that an interrupted process never leaves a torn one."""
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
