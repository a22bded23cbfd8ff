"""What a run leaves behind: a text log, TensorBoard event files and one JSON line per epoch.

Only the main process writes; on other ranks every method does nothing, so callers need no checks.
"""
import json
import logging
import os
import sys

from . import run_dir as rd


class RunLogger:
    def __init__(self, run_dir: str, enabled: bool):
        self.enabled = enabled
        self.run_dir = run_dir
        self._log = logging.getLogger(f'primkd.{run_dir}')
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        self.tb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        fmt = logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S')
        for handler in (logging.StreamHandler(sys.stdout),
                        logging.FileHandler(rd.run_file(run_dir, rd.LOG_FILE))):
            handler.setFormatter(fmt)
            self._log.addHandler(handler)
        from tensorboardX import SummaryWriter  # imported here: only the main process writes events
        self.tb = SummaryWriter(rd.run_file(run_dir, rd.TB_DIR))

    def info(self, message: str):
        if self.enabled:
            self._log.info(message)

    def scalars(self, values: dict, step: int, prefix: str):
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(f'{prefix}/{name}', value, step)

    def epoch_record(self, record: dict):
        """Appends one line to metrics.jsonl: the per-epoch figures a test or a plot reads back."""
        if self.enabled:
            with open(rd.run_file(self.run_dir, rd.METRICS_FILE), 'a') as f:
                f.write(json.dumps(record) + '\n')

    def close(self):
        if self.tb is not None:
            self.tb.close()
        for handler in list(self._log.handlers):
            handler.close()
            self._log.removeHandler(handler)
