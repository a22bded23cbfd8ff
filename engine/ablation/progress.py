"""Where a grid stands (tools/ablate.py --status): per cell whether it is finished, training, stopped
or not started, its epochs, its test mIoU so far and the cell time it still needs, from the files its
cells have written; it runs and writes nothing."""
import json
import socket
import statistics

from engine import run_dir as rd

from .grid import cell_state
from .report import best_on_test, read_curve

RATE_EPOCHS = 5   # seconds per epoch: the median of a cell's last epochs (its cores may have been shared)


def seconds_per_epoch(curve):
    """The median wall time of the last RATE_EPOCHS recorded epochs, None where none was timed."""
    timed = [r['seconds'] for r in curve if 'seconds' in r][-RATE_EPOCHS:]
    return statistics.median(timed) if timed else None


def duration(seconds):
    if seconds >= 3600:
        return f'{seconds / 3600:.1f} h'
    return f'{seconds / 60:.0f} min' if seconds >= 90 else f'{seconds:.0f} s'


def cell_progress(cell):
    """(state, epochs done, epochs, curve, last checkpoint's test mIoU % or None) of a cell."""
    state, _ = cell_state(cell)
    epochs = cell.spec['settings']['nepochs']
    curve = read_curve(cell) if state in ('finished', 'unfinished') else []
    done = curve[-1]['epoch'] if curve else 0
    last = None
    if state == 'finished':
        with open(cell.result_path) as f:
            last = 100 * json.load(f)['miou']
    elif state == 'unfinished':
        holder = rd.lock_holder(rd.run_dir(cell.folder, cell.mode))
        if holder is not None and holder.get('host') != socket.gethostname():
            state = f"locked by pid {holder.get('pid')} on host {holder.get('host')} (not checked from here)"
        elif holder is not None:
            state = f"training (pid {holder.get('pid')} on {holder.get('host')})"
        elif done >= epochs:
            state = 'trained; its evaluation not written yet'
        else:
            state = 'stopped: continues when the command is run again'
    elif state == 'new':
        state = 'not started'
    elif state == 'changed':
        state = 'run with other settings: runs again only with --rerun-changed'
    else:
        state = 'its folder holds other files'
    return state, done, epochs, curve, last


def status_table(cells) -> str:
    """A Markdown table of every cell and a line on how much cell time the grid still needs: a cell's
    own seconds per epoch, else its variant's other cells', times its epochs left."""
    progress = {cell.name: cell_progress(cell) for cell in cells}
    variant_rates = {}
    for cell in cells:
        rate = seconds_per_epoch(progress[cell.name][3])
        if rate is not None:
            variant_rates.setdefault(cell.variant, []).append(rate)
    lines = ['| cell | state | epochs | last evaluated test mIoU | best on test (epoch) | s / epoch | cell time left |',
             '|---|---|---|---|---|---|---|']
    left, unknown, finished = 0.0, 0, 0
    for cell in cells:
        state, done, epochs, curve, last = progress[cell.name]
        evaluated = [r for r in curve if 'miou' in r]
        if last is not None:
            finished += 1
            shown = f'{last:.1f} (last checkpoint)'
        else:
            shown = f"{100 * evaluated[-1]['miou']:.1f} (epoch {evaluated[-1]['epoch']})" if evaluated else '–'
        best, best_epoch = best_on_test(curve)
        rate, rate_text = seconds_per_epoch(curve), ''
        if rate is None and cell.variant in variant_rates:
            rate, rate_text = statistics.mean(variant_rates[cell.variant]), " (its variant's)"
        if last is not None:
            time_left = '–'
        elif rate is None:
            time_left, unknown = 'unknown', unknown + 1
        else:
            left += rate * (epochs - done)
            time_left = duration(rate * (epochs - done))
        lines.append(f"| {cell.name} | {state} | {done}/{epochs} | {shown} | "
                     f"{'–' if best is None else f'{best:.1f} ({best_epoch})'} | "
                     f"{'–' if rate is None else f'{rate:.1f}{rate_text}'} | {time_left} |")
    parts = [f'{finished} of {len(cells)} cells finished']
    if left:
        parts.append(f'the others need about {duration(left)} of cell time')
    if unknown:
        parts.append(f'{unknown} not timed yet (no timed epoch of their variant)')
    return '\n'.join(lines) + '\n\n' + '; '.join(parts) + '\n'
