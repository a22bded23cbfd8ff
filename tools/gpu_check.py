"""One short check of the GPU training path on one GPU, in about 7 minutes (docs/gpu_check.md).

    bash tools/gpu_check.sh OUT_DIR [--budget SECONDS] [--work DIR]
    GPU_CHECK_REHEARSE=1 bash tools/gpu_check.sh OUT_DIR     # every stage on the CPU, tiny sizes

Stages, in this order, each a subprocess with its own time limit inside one overall budget:

  info      the device, driver, torch / CUDA / cuDNN / NCCL versions (OUT_DIR/device.json) and
            nvidia-smi's report (OUT_DIR/nvidia-smi.txt)
  data      32 training and 8 test synthetic rooms at 480x640 (tools/make_synthetic.py) and a
            random-weight MiT-B4 RGB teacher for them, in the work folder
  bench_b2  tools/benchmark.py, MiT-B2 student (config/nyu_b2.py), batch 4, 480x640, variants fp32,
            bf16, bf16+channels_last, bf16+compile, --eval -> OUT_DIR/<gpu>_nyu_b2.json
  train     train.sh config/nyu_b2.py on the rooms: torchrun with one process (PRIMKD_TORCHRUN=1), so
            NCCL, DDP and the SyncBatchNorm conversion are on; --compile, bf16; 3 epochs of 8 steps
  resume    the same run resumed (--resume auto) for one more epoch
  val       val.sh on the run's last.pth (one torchrun process, NCCL) -> OUT_DIR/val.json
  bench_b4  as bench_b2 for the MiT-B4 student (config/nyu_b4.py) -> OUT_DIR/<gpu>_nyu_b4.json

The B4 benchmark comes last: its compilation is the longest and least certain stage, so running out
of budget there costs only its own row. Training and benchmarks run with
TORCH_LOGS=graph_breaks,recompiles; the summary counts graph breaks, recompilations, frames that hit
the recompile limit and frames dynamo would not convert. Step times come from the run's TensorBoard
wall times, the loss from its per-step values, peak memory from nvidia-smi sampled every 0.5 s while
the stage runs (device memory in use, the caching allocator's reserve and the CUDA context
included; on the CPU, the summed resident memory of the stage's processes).

The summary table is printed at the end and written to OUT_DIR/summary.txt and summary.json (also
after each stage, so a check killed midway leaves what it had); every stage's output is in
OUT_DIR/logs/. Exit status 0 when every stage passed, 1 otherwise (the last line names the stages
that failed, timed out or were skipped), 2 when it cannot start: without a usable GPU it stops at
once with one line, unless GPU_CHECK_REHEARSE=1 (or --rehearse) asks for the CPU rehearsal.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

STAGE_NAMES = ('info', 'data', 'bench_b2', 'train', 'resume', 'val', 'bench_b4')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_LOGS = 'graph_breaks,recompiles'
MIN_STAGE_SECONDS = 20   # a stage that would get less of the budget is skipped

# What each mode runs. 'limits' are each stage's own time limit in seconds (the GPU figures are
# estimates for one H100, not yet measured: docs/gpu_check.md).
PLANS = {
    'gpu': {
        'budget': 480,
        'limits': {'info': 60, 'data': 90, 'bench_b2': 150, 'train': 180, 'resume': 120, 'val': 60,
                   'bench_b4': 200},
        'rooms': (32, 8), 'size': (480, 640), 'data_workers': 8,
        'bench': ['--batch', '4', '--size', '480', '640', '--steps', '10', '--warmup', '3', '--eval',
                  '--variants', 'fp32', 'bf16', 'bf16+channels_last', 'bf16+compile', '--device', 'cuda'],
        'bench_opts': [],
        'batch': 4, 'steps_per_epoch': 8, 'epochs': 3, 'resume_epochs': 1, 'num_workers': 4,
        'train_flags': ['--amp', 'bf16', '--compile', '--device', 'cuda'],
        'val_flags': ['--amp', 'bf16', '--device', 'cuda'],
        'backend': 'nccl',
    },
    'rehearse': {
        'budget': 1500,
        'limits': {'info': 60, 'data': 120, 'bench_b2': 300, 'train': 360, 'resume': 240, 'val': 150,
                   'bench_b4': 300},
        'rooms': (4, 2), 'size': (64, 96), 'data_workers': 1,
        'bench': ['--batch', '2', '--size', '64', '96', '--steps', '1', '--warmup', '1', '--eval',
                  '--variants', 'fp32', 'bf16', '--device', 'cpu'],
        'bench_opts': ['eval_crop_size=[64, 96]'],
        'batch': 2, 'steps_per_epoch': 2, 'epochs': 2, 'resume_epochs': 1, 'num_workers': 0,
        'train_flags': ['--amp', 'none', '--device', 'cpu'],
        'val_flags': ['--amp', 'none', '--device', 'cpu'],
        'backend': 'gloo',
    },
}
# A learning rate at which a few dozen steps from random weights show the loss fall (the recipe's
# 6e-5 after 10 warm-up epochs is for 500 epochs).
CHECK_LR = 3e-4


def gpu_short_name(name):
    """'h100' for 'NVIDIA H100 80GB HBM3', 'a100' for 'NVIDIA A100-SXM4-80GB'; 'cpu' for None."""
    if not name:
        return 'cpu'
    words = re.sub(r'^NVIDIA\s+', '', name).replace('-', ' ').split()
    for word in words:
        if re.fullmatch(r'[A-Za-z]+\d+[A-Za-z]*', word):
            return word.lower()
    return re.sub(r'[^a-z0-9]+', '', ''.join(w for w in words if w.lower() != 'geforce').lower()) or 'gpu'


# --- reading a stage's results ---

FALLBACK_PATTERNS = {
    'graph_breaks': re.compile(r'Graph break (?:\(user stack suppressed[^)]*\) )?in user code'),
    'recompiles': re.compile(r'Recompiling function'),
    'recompile_limit': re.compile(r'torch\._dynamo hit config\.'),
    'not_converted': re.compile(r"WON'T CONVERT"),
}


def compile_fallbacks(text):
    """How often torch.compile fell back, counted from a log written with TORCH_LOGS=graph_breaks,recompiles."""
    return {name: sum(1 for line in text.splitlines() if pattern.search(line))
            for name, pattern in FALLBACK_PATTERNS.items()}


def read_wall_times(event_dir, tag='train/loss'):
    """{step: (wall time, value)} of one scalar from the TensorBoard files of a folder; a step written
    twice (a resumed run) keeps the later one."""
    from engine.logger import read_scalars
    found = {}
    for step, value, wall_time in read_scalars(event_dir).get(tag, []):
        if step not in found or wall_time >= found[step][0]:
            found[step] = (wall_time, value)
    return found


def step_figures(steps, steps_per_epoch, started):
    """Figures of one run's steps {step: (wall time, loss)}: seconds from the start of the process to
    the first step's end (start-up and compilation), the median step after the first epoch (after the
    second step for a one-epoch run), the longest step, and whether the loss fell (the mean of the
    first three steps against the last three)."""
    order = sorted(steps)
    durations = [(step, (steps[step][0] - steps[previous][0]) * 1e3)
                 for previous, step in zip(order, order[1:]) if step % steps_per_epoch != 0]
    first_epoch_end = order[0] - order[0] % steps_per_epoch + steps_per_epoch
    steady = [ms for step, ms in durations if step >= first_epoch_end]
    if not steady or len(order) <= steps_per_epoch:
        steady = [ms for step, ms in durations if step >= order[0] + 2] or [ms for _, ms in durations]
    losses = [steps[step][1] for step in order]
    k = max(1, min(3, len(losses) // 2))
    first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
    return {'steps': len(order), 'first_step_s': round(steps[order[0]][0] - started, 2),
            'steady_step_ms': round(statistics.median(steady), 1) if steady else None,
            'max_step_ms': round(max(ms for _, ms in durations), 1) if durations else None,
            'loss_first': round(first, 4), 'loss_last': round(last, 4), 'loss_fell': last < first}


class PeakMemory:
    """Samples, every 0.5 s while a stage runs, the GPU memory in use (nvidia-smi) or on the CPU the
    summed resident memory of the stage's process group; `megabytes` is the peak."""

    def __init__(self, gpu_index, process_group):
        self.gpu_index, self.group = gpu_index, process_group
        self.megabytes, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        if self.gpu_index is not None:
            done = subprocess.run(['nvidia-smi', f'--id={self.gpu_index}', '--query-gpu=memory.used',
                                   '--format=csv,noheader,nounits'], capture_output=True, text=True, timeout=10)
            return float(done.stdout.split()[0])
        total = 0
        for stat in glob.glob('/proc/[0-9]*/stat'):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.group:   # pgrp, then rss (pages) as field 22 after the name
                total += int(fields[21]) * os.sysconf('SC_PAGE_SIZE')
        return total / 2 ** 20

    def _run(self):
        while not self._stop.is_set():
            try:
                value = self._sample()
                self.megabytes = value if self.megabytes is None else max(self.megabytes, value)
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)
        return False


# --- the check ---

class Check:
    def __init__(self, out, work, rehearse, budget):
        self.out, self.work, self.rehearse = out, work, rehearse
        self.plan = PLANS['rehearse' if rehearse else 'gpu']
        self.budget = budget or self.plan['budget']
        self.started = time.monotonic()
        self.stages = []
        self.gpu = 'cpu' if rehearse else 'gpu'
        self.gpu_index = None if rehearse else first_visible_gpu()
        self.env = dict(os.environ, PYTHONUNBUFFERED='1', TORCH_LOGS=TORCH_LOGS, NCCL_DEBUG='VERSION',
                        PRIMKD_TORCHRUN='1',
                        PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
        if rehearse:
            self.env.update(CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
        elif self.gpu_index is not None:
            self.env['CUDA_VISIBLE_DEVICES'] = self.gpu_index   # one GPU: one torchrun process
        self.rooms = os.path.join(work, 'rooms')
        self.teacher = os.path.join(work, 'teacher.pth')
        self.log_dir = os.path.join(work, 'log')
        self.run_dir = os.path.join(self.log_dir, 'student')

    # helpers
    def left(self):
        return self.budget - (time.monotonic() - self.started)

    def data_opts(self):
        from config import load_config
        demo = load_config(os.path.join(REPO_ROOT, 'config', 'demo.py'))   # the rooms' classes and files
        height, width = self.plan['size']
        train, test = self.plan['rooms']
        opts = {'dataset_name': 'Synthetic', 'dataset_path': self.rooms, 'rgb_format': demo.rgb_format,
                'x_format': demo.x_format, 'num_train_imgs': train, 'num_eval_imgs': test,
                'num_classes': demo.num_classes, 'class_names': list(demo.class_names),
                'image_height': height, 'image_width': width, 'eval_crop_size': [height, width],
                'log_dir': self.log_dir, 'synthetic_preset': None}
        return [f'{k}={v!r}' for k, v in opts.items()]

    def train_opts(self, epochs):
        plan = self.plan
        opts = {'batch_size': plan['batch'], 'niters_per_epoch': plan['steps_per_epoch'], 'nepochs': epochs,
                'warm_up_epoch': 1, 'lr': CHECK_LR, 'eval_step': 1000, 'checkpoint_step': 1000,
                'num_workers': plan['num_workers']}
        return self.data_opts() + [f'{k}={v!r}' for k, v in opts.items()]

    def run(self, name, command, limit):
        """Runs one stage's command (its own process group), output to logs/<name>.log; returns
        (exit status or 'timed out', seconds, peak MB, log text)."""
        log_path = os.path.join(self.out, 'logs', f'{name}.log')
        start = time.monotonic()
        with open(log_path, 'w') as log:
            log.write('$ ' + ' '.join(command) + '\n')
            log.flush()
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            with PeakMemory(self.gpu_index, process.pid) as memory:
                try:
                    status = process.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    status = 'timed out'
                    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                        try:
                            os.killpg(process.pid, sig)
                            process.wait(timeout=wait)
                            break
                        except (ProcessLookupError, subprocess.TimeoutExpired):
                            continue
        with open(log_path, errors='replace') as f:
            text = f.read()
        return status, time.monotonic() - start, memory.megabytes, text

    def stage(self, name, command, read=None, needs=()):
        """Runs a stage unless a stage it needs did not pass or the budget is spent; records it."""
        limit = min(self.plan['limits'][name], int(self.left()))
        record = {'name': name, 'limit_s': limit, 'seconds': 0.0, 'figures': {}, 'note': ''}
        missing = [n for n in needs if self.status(n) != 'passed']
        if missing:
            record.update(status='skipped', note=f'needs {", ".join(missing)}')
        elif limit < MIN_STAGE_SECONDS:
            record.update(status='skipped', note=f'budget spent ({self.budget} s)')
        else:
            print(f'gpu_check: {name} (limit {limit} s) ...', flush=True)
            started = time.time()
            status, seconds, peak_mb, text = self.run(name, command, limit)
            record.update(seconds=round(seconds, 1))
            if peak_mb is not None:
                record['figures']['peak_memory_mb'] = round(peak_mb)
            if status == 'timed out':
                record.update(status='timed out', note=f'stopped after {limit} s')
            elif status != 0:
                record.update(status='failed', note=f'exit status {status}: {last_error(text)}')
            else:
                record['status'] = 'passed'
            if read is not None:
                try:
                    problem = read(record, text, started)
                except Exception as e:  # a result that cannot be read is that stage's failure
                    problem = f'results unreadable: {type(e).__name__}: {e}'
                if problem and record['status'] == 'passed':
                    record.update(status='failed', note=problem)
        self.stages.append(record)
        self.write_summary()
        return record

    def status(self, name):
        return next((s['status'] for s in self.stages if s['name'] == name), None)

    # the stages' result readers: each fills record['figures'] / ['note'] and returns a problem or None
    def read_info(self, record, text, started):
        with open(os.path.join(self.out, 'device.json')) as f:
            info = json.load(f)
        self.gpu = gpu_short_name(info['device']['name'] if info['device']['type'] == 'cuda' else None)
        v = info['versions']
        record['figures'].update(device=info['device'].get('name', 'cpu'), driver=info.get('driver'),
                                 torch=v['torch'], cuda=v['cuda'], cudnn=v.get('cudnn'), nccl=info.get('nccl'))
        record['note'] = (f"{info['device'].get('name', 'CPU')}, driver {info.get('driver')}, torch {v['torch']}, "
                          f"CUDA {v['cuda']}, cuDNN {v.get('cudnn')}, NCCL {info.get('nccl')}")
        if not self.rehearse and info['device']['type'] != 'cuda':
            return 'torch did not start on the GPU'
        return None

    def read_data(self, record, text, started):
        found = re.search(r' in ([\d.]+) s', text)
        record['figures']['rooms_s'] = float(found[1]) if found else None
        train, test = self.plan['rooms']
        record['note'] = (f'{train}+{test} rooms at {"x".join(map(str, self.plan["size"]))}'
                          + (f' in {found[1]} s' if found else '') + '; random MiT-B4 teacher')
        return None if os.path.isfile(self.teacher) else 'no teacher checkpoint written'

    def read_bench(self, json_name):
        def read(record, text, started):
            with open(os.path.join(self.out, json_name)) as f:
                report = json.load(f)
            rows, errors = [], []
            for variant in report['variants']:
                if 'error' in variant:
                    errors.append(f"{variant['variant']}: {variant['error']}")
                    continue
                train = variant['train']
                rows.append(f"{variant['variant']} {train['images_per_s']:.1f}"
                            + (f" ({train['speedup_vs_fp32']:.2f}x)" if train.get('speedup_vs_fp32') else ''))
                record['figures'][variant['variant']] = {
                    'train_images_per_s': train['images_per_s'], 'speedup': train.get('speedup_vs_fp32'),
                    'mfu': train.get('mfu'), 'peak_memory_mb': train.get('peak_memory_mb'),
                    'eval_ms': variant.get('eval', {}).get('ms_median')}
            fallbacks = compile_fallbacks(text)
            record['figures']['compile_fallbacks'] = fallbacks
            record['note'] = 'train img/s: ' + ', '.join(rows) + describe_fallbacks(fallbacks, self.rehearse)
            return '; '.join(errors) or None
        return read

    def read_run(self, first_step, last_step, expect_epochs):
        def read(record, text, started):
            steps = {s: v for s, v in read_wall_times(os.path.join(self.run_dir, 'tb')).items()
                     if first_step <= s < last_step}
            figures = record['figures']
            if steps:
                figures.update(step_figures(steps, self.plan['steps_per_epoch'], started))
            with open(os.path.join(self.run_dir, 'train.log'), errors='replace') as f:
                log = f.read()
            group = re.findall(r'process group: (\w+) backend', log)
            figures['process_group'] = group[-1] if group else None
            figures['sync_batchnorm'] = bool(group) and log.rsplit('process group:', 1)[1].split('\n')[0].endswith(
                ', SyncBatchNorm')
            nccl = re.findall(r'NCCL version (\S+)', text)
            figures['nccl'] = nccl[0] if nccl else None
            figures['compile_fallbacks'] = compile_fallbacks(text)
            if not steps:
                return 'no training steps recorded'
            memory = figures.get('peak_memory_mb')
            record['note'] = (f"loss {figures['loss_first']:.3f} -> {figures['loss_last']:.3f}, "
                              f"first step after {figures['first_step_s']:.0f} s, "
                              f"{figures['steady_step_ms']} ms/step (max {figures['max_step_ms']}), "
                              f"peak {'n/a' if memory is None else f'{memory} MB'}, "
                              f"{figures['process_group']}{' ' + figures['nccl'] if figures['nccl'] else ''}"
                              f"{', SyncBatchNorm' if figures['sync_batchnorm'] else ''}"
                              + describe_fallbacks(figures['compile_fallbacks'], self.rehearse))
            problems = []
            if len(steps) != last_step - first_step:
                problems.append(f'{len(steps)} of {last_step - first_step} steps recorded')
            if expect_epochs > 1 and not figures['loss_fell']:
                problems.append('the loss did not fall')
            if figures['process_group'] != self.plan['backend']:
                problems.append(f"process group {figures['process_group']}, expected {self.plan['backend']}")
            if not self.rehearse and not figures['sync_batchnorm']:
                problems.append('no SyncBatchNorm')
            return '; '.join(problems) or None
        return read

    def read_val(self, record, text, started):
        with open(os.path.join(self.out, 'val.json')) as f:
            result = json.load(f)
        miou = find_key(result, 'miou')
        record['figures']['miou'] = miou
        record['note'] = f'mIoU {miou:.4f} on {self.plan["rooms"][1]} test rooms (a check, not a result)'
        return None

    # the whole check
    def run_all(self):
        os.makedirs(os.path.join(self.out, 'logs'), exist_ok=True)
        os.makedirs(self.work, exist_ok=True)
        py, here = sys.executable, os.path.abspath(__file__)
        print(f'gpu_check: {"CPU rehearsal" if self.rehearse else "GPU check"}, budget {self.budget} s, '
              f'results in {self.out}', flush=True)
        self.stage('info', ['bash', '-c', f'nvidia-smi > {q(self.out)}/nvidia-smi.txt 2>&1 '
                            f'|| echo "nvidia-smi: not found or failed" >> {q(self.out)}/nvidia-smi.txt; '
                            f'exec {q(py)} {q(here)} --describe {q(os.path.join(self.out, "device.json"))}'],
                   self.read_info)
        train, test = self.plan['rooms']
        height, width = self.plan['size']
        self.stage('data', ['bash', '-c', f'set -e; {q(py)} tools/make_synthetic.py --out {q(self.rooms)} '
                            f'--num-train {train} --num-test {test} --height {height} --width {width} '
                            f'--seed 12345 --workers {self.plan["data_workers"]} --overwrite; '
                            f'{q(py)} {q(here)} --write-teacher {q(self.teacher)} --opts '
                            + ' '.join(q(o) for o in self.data_opts())], self.read_data)
        bench = lambda config, name: [py, 'tools/benchmark.py', '-c', config, *self.plan['bench'],
                                      '--json', os.path.join(self.out, name),
                                      *(['--opts', *self.plan['bench_opts']] if self.plan['bench_opts'] else [])]
        name_b2 = f'{self.gpu}_nyu_b2.json'
        self.stage('bench_b2', bench('config/nyu_b2.py', name_b2), self.read_bench(name_b2))
        epochs, more = self.plan['epochs'], self.plan['epochs'] + self.plan['resume_epochs']
        steps = self.plan['steps_per_epoch']
        run = ['bash', 'train.sh', 'config/nyu_b2.py', '--no-pretrained', '--teacher', self.teacher,
               *self.plan['train_flags']]
        self.stage('train', [*run, '--opts', *self.train_opts(epochs)],
                   self.read_run(0, epochs * steps, epochs), needs=('data',))
        self.stage('resume', [*run, '--resume', 'auto', '--opts', *self.train_opts(more)],
                   self.read_run(epochs * steps, more * steps, self.plan['resume_epochs']), needs=('train',))
        self.stage('val', ['bash', 'val.sh', 'config/nyu_b2.py', '-e', os.path.join(self.run_dir, 'last.pth'),
                           *self.plan['val_flags'], '--json', os.path.join(self.out, 'val.json'), '--overwrite',
                           '--opts', *self.data_opts()], self.read_val, needs=('train',))
        name_b4 = f'{self.gpu}_nyu_b4.json'
        self.stage('bench_b4', bench('config/nyu_b4.py', name_b4), self.read_bench(name_b4))
        table = self.write_summary()
        print('\n' + table, end='')
        failed = [s for s in self.stages if s['status'] != 'passed']
        if failed:
            print('gpu_check: FAILED: ' + ', '.join(f"{s['name']} ({s['status']}: {s['note']})" for s in failed),
                  file=sys.stderr)
            return 1
        print(f'gpu_check: every stage passed in {time.monotonic() - self.started:.0f} s')
        return 0

    def write_summary(self):
        header = f"{'stage':<10}{'status':<11}{'seconds':>8}{'limit':>7}  result"
        lines = [f'{"CPU rehearsal" if self.rehearse else "GPU check"} ({self.gpu}), budget {self.budget} s, '
                 f'{time.monotonic() - self.started:.0f} s so far', header, '-' * len(header)]
        for s in self.stages:
            lines.append(f"{s['name']:<10}{s['status']:<11}{s['seconds']:>8.1f}{s['limit_s']:>7}  {s['note']}")
        table = '\n'.join(lines) + '\n'
        with open(os.path.join(self.out, 'summary.txt'), 'w') as f:
            f.write(table)
        summary = {'rehearsal': self.rehearse, 'gpu': self.gpu, 'budget_s': self.budget,
                   'seconds': round(time.monotonic() - self.started, 1), 'stages': self.stages,
                   'failed': [s['name'] for s in self.stages if s['status'] != 'passed']}
        with open(os.path.join(self.out, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=1)
        return table


def q(text):
    import shlex
    return shlex.quote(str(text))


def find_key(value, key):
    """The first value of `key` in nested dicts / lists (val.py's JSON)."""
    if isinstance(value, dict):
        if key in value and isinstance(value[key], (int, float)):
            return value[key]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


def last_error(text):
    """The last line of a log that looks like an error, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r'error|Error|Exception|Traceback', line)]
    return (errors or lines or [''])[-1][:300]


def describe_fallbacks(fallbacks, rehearse):
    if rehearse:
        return ''   # nothing is compiled in the rehearsal
    found = [f'{count} {name.replace("_", " ")}' for name, count in fallbacks.items() if count]
    return '; compile: ' + (', '.join(found) if found else 'no fallbacks logged')


def first_visible_gpu():
    """The GPU the check uses, as nvidia-smi --id and CUDA_VISIBLE_DEVICES name it: the first of
    CUDA_VISIBLE_DEVICES, else 0."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    return visible.split(',')[0].strip() if visible and visible.strip() else '0'


# --- the two helpers the stages run in their own processes ---

def describe(path):
    """device.json: the device, versions, driver, NCCL."""
    import torch
    from utils.benchmarking import device_info, library_versions
    from utils.io import write_json
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    info = {'device': device_info(device), 'versions': library_versions(device), 'driver': None, 'nccl': None,
            'cuda_visible_devices': os.environ.get('CUDA_VISIBLE_DEVICES'), 'python': sys.version.split()[0],
            'date': time.strftime('%Y-%m-%dT%H:%M:%S')}
    if device.type == 'cuda':
        info['nccl'] = '.'.join(map(str, torch.cuda.nccl.version()))
        info['arch_list'] = torch.cuda.get_arch_list()
        try:
            smi = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=30)
            info['driver'] = smi.stdout.split()[0] if smi.returncode == 0 and smi.stdout.split() else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    write_json(path, info, indent=1)
    print(json.dumps(info, indent=1))


def write_teacher(path, opts):
    """A random-weight RGB teacher of nyu_b2's teacher_backbone for the rooms' classes (no released
    teacher is needed: the check times the distillation step, not its accuracy)."""
    import torch
    from config import load_config
    from engine.rng import seed_everything
    from models.builder import build_teacher
    cfg = load_config(os.path.join(REPO_ROOT, 'config', 'nyu_b2.py'), opts)
    seed_everything(cfg.seed)
    torch.save({'model': build_teacher(cfg).state_dict()}, path)
    print(f'wrote a random {cfg.teacher_backbone} teacher for {cfg.num_classes} classes to {path}')


def no_gpu_line():
    """None when a GPU is usable, else the one line that says why not."""
    from engine.devices import DeviceError, gpu_count
    try:
        if gpu_count('auto'):
            return None
        import torch
        why = f'torch {torch.__version__} (CUDA {torch.version.cuda}) sees none on this machine'
    except DeviceError as e:
        why = str(e).replace('--device auto: ', '', 1)
    return (f'gpu_check: no usable GPU: {why}; nothing was run '
            f'(GPU_CHECK_REHEARSE=1 or --rehearse runs the check on the CPU)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     epilog='docs/gpu_check.md describes every stage and its results.')
    parser.add_argument('out', nargs='?', metavar='OUT_DIR', help='where the results go')
    parser.add_argument('--rehearse', action='store_true',
                        help='every stage on the CPU at tiny sizes, gloo instead of NCCL, no compile '
                             '(also GPU_CHECK_REHEARSE=1)')
    parser.add_argument('--budget', type=int, metavar='SECONDS',
                        help='all stages together (default: 480 on a GPU, 1500 for the rehearsal)')
    parser.add_argument('--work', metavar='DIR',
                        help='rooms, teacher and run directory (default: a temporary folder, removed at the end)')
    parser.add_argument('--describe', metavar='JSON', help=argparse.SUPPRESS)
    parser.add_argument('--write-teacher', metavar='PTH', help=argparse.SUPPRESS)
    parser.add_argument('--opts', nargs='*', default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.describe:
        return describe(args.describe)
    if args.write_teacher:
        return write_teacher(args.write_teacher, args.opts)
    if not args.out:
        parser.error('OUT_DIR is required')
    rehearse = args.rehearse or os.environ.get('GPU_CHECK_REHEARSE', '0') not in ('', '0')
    if not rehearse:
        line = no_gpu_line()
        if line:
            print(line, file=sys.stderr)
            return 2
    if args.budget is not None and args.budget < MIN_STAGE_SECONDS:
        parser.error(f'--budget must be at least {MIN_STAGE_SECONDS} s')
    out = os.path.abspath(args.out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        parser.exit(2, f'gpu_check: cannot write {out}: {e}\n')
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix='gpu_check_')
    try:
        return Check(out, work, rehearse, args.budget).run_all()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
