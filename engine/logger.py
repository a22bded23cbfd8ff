"""What a run leaves behind: a text log, TensorBoard event files and one JSON line per epoch.

Only the main process writes; on other ranks every method does nothing, so callers need no checks.
Until open_files() the log goes to the console only and is kept, then written to the top of
train.log: a run refused by a start-up check writes nothing into its run directory.
"""
import glob
import logging
import logging.handlers
import os
import struct
import sys

from tqdm import tqdm

from . import run_dir as rd

_FORMAT = logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S')


class _Below(logging.Filter):
    """Lets through the records below a level (the console's stdout takes what stderr does not)."""

    def __init__(self, level):
        super().__init__()
        self.level = level

    def filter(self, record):
        return record.levelno < self.level


class _Stderr(logging.Handler):
    """stderr through tqdm.write, so that a message ending the run starts its own line instead of
    following an epoch's progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stderr)


class RunLogger:
    def __init__(self, run_dir: str, enabled: bool, prog: str = 'train.py'):
        self.enabled = enabled
        self.run_dir = run_dir
        self._log = logging.getLogger(f'primkd.{run_dir}')
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        self.tb = None
        self._early = None
        if not enabled:
            return
        stdout = logging.StreamHandler(sys.stdout)
        stdout.setFormatter(_FORMAT)
        stdout.addFilter(_Below(logging.ERROR))
        stderr = _Stderr()
        stderr.setFormatter(logging.Formatter(f'{prog}: error: %(message)s'))
        stderr.setLevel(logging.ERROR)
        self._early = logging.handlers.MemoryHandler(capacity=10 ** 6, flushLevel=logging.CRITICAL + 1)
        for handler in (stdout, stderr, self._early):
            self._log.addHandler(handler)

    def open_files(self):
        """Starts train.log (with what was logged so far) and the TensorBoard events."""
        if not self.enabled:
            return
        log_file = logging.FileHandler(rd.run_file(self.run_dir, rd.LOG_FILE))
        log_file.setFormatter(_FORMAT)
        self._early.setTarget(log_file)
        self._early.flush()
        self._log.removeHandler(self._early)
        self._early.close()
        self._early = None
        self._log.addHandler(log_file)
        from tensorboardX import SummaryWriter  # imported here: only the main process writes events
        self.tb = SummaryWriter(rd.run_file(self.run_dir, rd.TB_DIR))

    def info(self, message: str):
        if self.enabled:
            self._log.info(message)

    def error(self, message: str):
        """What ends the run: one line on stderr, and in train.log."""
        if self.enabled:
            self._log.error(message)

    def scalars(self, values: dict, step: int, prefix: str):
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(f'{prefix}/{name}', value, step)

    def epoch_record(self, record: dict):
        """The epoch's line of metrics.jsonl: the per-epoch figures a test or a plot reads back."""
        if self.enabled:
            rd.record_epoch(self.run_dir, record)

    def close(self):
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        for handler in list(self._log.handlers):
            handler.close()
            self._log.removeHandler(handler)


def read_scalars(event_dir: str) -> dict:
    """{tag: [(step, value, wall time), ...]} in the order written, from the TensorBoard event files
    of a folder, for the tests and tools that check what a run logged. The files are TFRecord frames
    (length u64, crc u32, payload, crc u32) of Event protos; tensorboardX writes but does not read."""
    from tensorboardX.proto import event_pb2
    scalars = {}
    for path in sorted(glob.glob(os.path.join(event_dir, 'events.out.tfevents.*'))):
        with open(path, 'rb') as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack('<Q', data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value, event.wall_time))
    return scalars
