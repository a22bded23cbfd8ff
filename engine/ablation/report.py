"""A grid's figures from its finished cells: per variant the test mIoU of the last checkpoint and
the best one on the test split (the official code's selection), their paired differences to the
reference variant (Student-t over seeds, and optionally a bootstrap over the test images), the
learning curves and the schedule rule that says whether training had stopped improving."""
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess

import numpy
import torch

from config import REPO_ROOT

from engine import run_dir as rd
from utils.benchmarking import library_versions
from utils.io import atomic_write, write_json
from utils.statistics import paired_image_bootstrap, paired_interval, seed_statistics

from .grid import repo_path

RESULTS_FILE = 'results.json'
TABLE_FILE = 'table.md'
CURVES_FILE = 'curves.png'
# The schedule rule, in two halves, each for every one of PLATEAU_VARIANTS.
# Within a grid (schedule_evidence): over the last third of the epochs the seeds' mean test mIoU rose
# by less than one seed-sd of the final figures (each end smoothed over SMOOTHING evaluated epochs, as
# single evaluations are noisy).
# Across grids (schedule_doubling), the decisive half: doubling the epochs raises the seeds' mean
# last-checkpoint mIoU by less than the larger seed-sd of the two schedules, and by less than
# PLATEAU_FLOOR points whatever the sd. The first half alone cannot tell: under a poly learning-rate
# schedule the end of any run flattens as the rate decays. The floor is there because two seeds'
# sd is a poor estimate of seed noise (0.1 for the 200-epoch teacher, 1.3 to 2.1 elsewhere).
PLATEAU_VARIANTS = ('rgb_teacher', 'cmx')
SMOOTHING = 3
PLATEAU_FLOOR = 1.0


def read_results(cells):
    """{(variant, seed): val.py's figures for the last checkpoint} of the finished cells."""
    results = {}
    for cell in cells:
        if os.path.isfile(cell.result_path):
            with open(cell.result_path) as f:
                results[cell.variant, cell.seed] = json.load(f)
    return results


def read_curve(cell):
    """The cell's per-epoch records (train loss terms; 'miou' at evaluated epochs), [] before any."""
    path = rd.run_file(rd.run_dir(cell.folder, cell.mode), rd.METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_curves(cells):
    return {(cell.variant, cell.seed): read_curve(cell) for cell in cells}


def best_on_test(curve):
    """(mIoU %, epoch) of the best evaluated epoch, as the official code keeps best.pth; None, None
    without an evaluation."""
    evaluated = [(100 * r['miou'], r['epoch']) for r in curve if 'miou' in r]
    if not evaluated:
        return None, None
    return max(evaluated, key=lambda pair: (pair[0], -pair[1]))


def paired(values, reference_values):
    """A paired Student-t difference {'seeds', 'mean', 'low', 'high'} over the common seeds, or None."""
    seeds = [s for s in values if s in reference_values]
    if not seeds:
        return None
    mean, low, high = paired_interval([values[s] for s in seeds], [reference_values[s] for s in seeds])
    return {'seeds': seeds, 'mean': mean, 'low': low, 'high': high}


def summarise(results, curves, cells, order, reference):
    """Every figure of the comparison, in percent, from read_results and read_curves."""
    seeds = list(dict.fromkeys(cell.seed for cell in cells))
    class_names = next(iter(results.values()))['class_names'] if results else []

    def per_seed(name, what):
        return {s: what(results[name, s], curves.get((name, s), [])) for s in seeds if (name, s) in results}

    def last(result, curve):
        return 100 * result['miou']

    def best(result, curve):
        value, _ = best_on_test(curve)
        return max(value, last(result, curve)) if value is not None else last(result, curve)

    reference_last, reference_best = per_seed(reference, last), per_seed(reference, best)
    summary = {}
    for name in order:
        mine_last, mine_best = per_seed(name, last), per_seed(name, best)
        entry = {'miou': seed_statistics(mine_last), 'best_miou': seed_statistics(mine_best),
                 'best_epoch': {str(s): best_on_test(curves.get((name, s), []))[1] for s in mine_last},
                 'best_minus_last': seed_statistics({s: mine_best[s] - mine_last[s] for s in mine_last}),
                 'pixel_acc': seed_statistics(per_seed(name, lambda r, c: 100 * r['pixel_acc']))}
        if name != reference:
            entry['difference'] = paired(mine_last, reference_last)
            entry['difference_best'] = paired(mine_best, reference_best)
            common = [s for s in mine_last if s in reference_last]
            if common:
                entry['class_iou_difference'] = {}
                for c, class_name in enumerate(class_names):
                    both = [(results[name, s]['iou'][c], results[reference, s]['iou'][c]) for s in common]
                    both = [100 * (a - b) for a, b in both if a is not None and b is not None]
                    entry['class_iou_difference'][class_name] = statistics.mean(both) if both else None
        summary[name] = entry
    return summary, class_names


def schedule_evidence(curves, summary, variants=PLATEAU_VARIANTS):
    """Per variant: the seeds' mean test mIoU at two thirds of training and at the end (each the mean
    of SMOOTHING evaluated epochs up to it), the gain between them, the seed-sd of the final figures,
    and whether the gain is below that sd (the rule). None for a variant without finished seeds.
    Only finished seeds count: a cell still training would cut the epochs short and mix in its figures."""
    evidence = {}
    for name in variants:
        finished = summary[name]['miou']['seeds'] if name in summary else {}
        seed_curves = [[(r['epoch'], 100 * r['miou']) for r in curve if 'miou' in r]
                       for (variant, seed), curve in sorted(curves.items()) if variant == name and str(seed) in finished]
        seed_curves = [c for c in seed_curves if c]
        if not seed_curves:
            evidence[name] = None
            continue
        epochs = min(c[-1][0] for c in seed_curves)

        def smoothed_mean(end):
            return statistics.mean(statistics.mean(v for e, v in c if end - SMOOTHING < e <= end) for c in seed_curves)
        two_thirds = round(2 * epochs / 3)
        gain = smoothed_mean(epochs) - smoothed_mean(two_thirds)
        sd = summary[name]['miou']['sd']
        evidence[name] = {'epochs': epochs, 'seeds': len(seed_curves), 'at_two_thirds': smoothed_mean(two_thirds),
                          'at_end': smoothed_mean(epochs), 'gain_last_third': gain, 'final_sd': sd,
                          'plateau': None if sd is None else gain < sd}
    return evidence


def figure(value, signed=False):
    if value is None:
        return '–'
    return f'{value:+.1f}' if signed else f'{value:.1f}'


def spread(stats):
    return f'{figure(stats["mean"])} ± {figure(stats["sd"])}' if stats['sd'] is not None else figure(stats['mean'])


def interval(difference):
    if difference is None:
        return '–'
    if difference['low'] is None:
        return figure(difference['mean'], True)
    return f'{figure(difference["mean"], True)} [{figure(difference["low"], True)}, {figure(difference["high"], True)}]'


def markdown_tables(summary, class_names, order, variants, reference, seeds, config, schedule=None):
    """The comparison as Markdown: last against best-on-test, per-seed figures, per-class differences,
    and the schedule rule's evidence."""
    boot = any(summary[name].get('bootstrap') for name in order)
    lines = [f'Test mIoU (%), {config}, seeds {", ".join(map(str, seeds))}. **last**: the final checkpoint '
             f'(this project\'s protocol); **best**: the best epoch on the test split, evaluated every epoch '
             f'(the official code\'s selection, which reads the test labels). Δ: paired by seed, to {reference}, '
             f'mean [95% Student-t interval over seeds]'
             + ('; bootstrap: 95% percentile interval over the test images (last checkpoints)' if boot else '')
             + '.', '',
             '| variant | mode | ' + ' | '.join(comparison_header(reference, boot)) + ' |',
             '|---|---|' + '---|' * len(comparison_header(reference, boot))]
    for name in order:
        row = [name, variants[name].mode, *comparison_cells(name, summary[name], reference, boot)]
        lines.append('| ' + ' | '.join(row) + ' |')
    lines += ['', 'Per seed: last / best (epoch of the best).', '',
              '| variant | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |', '|---|' + '---|' * len(seeds)]
    for name in order:
        entry = summary[name]
        cells = [f'{figure(entry["miou"]["seeds"].get(str(s)))} / {figure(entry["best_miou"]["seeds"].get(str(s)))}'
                 f' ({entry["best_epoch"].get(str(s)) or "–"})' if str(s) in entry['miou']['seeds'] else '–'
                 for s in seeds]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'Per-class IoU difference to {reference} (points, last checkpoints, mean over the paired seeds).',
              '', '| variant | ' + ' | '.join(class_names) + ' |', '|---|' + '---|' * len(class_names)]
    for name in order:
        per_class = summary[name].get('class_iou_difference')
        if per_class is not None:
            lines.append(f'| {name} | ' + ' | '.join(figure(per_class[c], True) for c in class_names) + ' |')
    if schedule:
        lines += ['', f'Schedule rule: training has stopped improving when the seeds\' mean test mIoU rose by less '
                      f'than one seed-sd of the final figures over the last third of the epochs (each end the mean '
                      f'of {SMOOTHING} evaluated epochs).', '',
                  *schedule_table(schedule)]
    return '\n'.join(lines) + '\n'


def comparison_header(reference, boot):
    """The column names of the last / best comparison (comparison_cells' figures)."""
    return ['last', 'best', 'best − last', f'Δ last vs {reference}', f'Δ best vs {reference}',
            *(['Δ last, bootstrap'] if boot else [])]


def comparison_cells(name, entry, reference, boot):
    """A variant's last and best-on-test mIoU, best - last and its paired differences to the reference
    under both protocols (and the bootstrap over test images with `boot`), as table cells."""
    if name == reference:
        compared = ['(reference)', '(reference)', *([''] if boot else [])]
    else:
        compared = [interval(entry.get('difference')), interval(entry.get('difference_best')),
                    *([interval(entry.get('bootstrap'))] if boot else [])]
    return [spread(entry['miou']), spread(entry['best_miou']), figure(entry['best_minus_last']['mean'], True),
            *compared]


def schedule_table(schedule):
    """The schedule rule's evidence as Markdown table lines."""
    lines = ['| variant | epochs | seeds | mIoU at 2/3 | at the end | gain | final sd | stopped improving |',
             '|---|---|---|---|---|---|---|---|']
    for name, item in schedule.items():
        if item is not None:
            verdict = {True: 'yes', False: 'no', None: '– (one seed)'}[item['plateau']]
            lines.append(f'| {name} | {item["epochs"]} | {item["seeds"]} | {figure(item["at_two_thirds"])} | '
                         f'{figure(item["at_end"])} | {figure(item["gain_last_third"], True)} | '
                         f'{figure(item["final_sd"])} | {verdict} |')
    return lines


def docs_excerpt(record: dict) -> str:
    """The tables docs/results.md shows of a DIR/results.json (a test keeps the two equal): per
    variant the finished seeds, last and best-on-test mIoU, best - last and the paired differences to
    the reference under both protocols (and the bootstrap over test images, if the grid has one); then
    the schedule rule's evidence."""
    reference, seeds = record['reference'], ' '.join(map(str, record['seeds']))
    boot = any(entry.get('bootstrap') for entry in record['variants'].values())
    header = comparison_header(reference, boot)
    lines = [f'| {record["config"]} {" ".join(record["opts"])}, seeds {seeds} | seeds done | ' + ' | '.join(header)
             + ' |', '|---|---|' + '---|' * len(header)]
    for name, entry in record['variants'].items():
        done = ' '.join(entry['miou']['seeds']) or '–'
        lines.append(f'| `{name}` | {done} | ' + ' | '.join(comparison_cells(name, entry, reference, boot)) + ' |')
    return '\n'.join(lines + [''] + schedule_table(record['schedule_rule'])) + '\n'


def schedule_doubling(records: list) -> list:
    """The across-grid half of the schedule rule, from results.json records: for every two grids of
    one config and the same options but the epochs, the second twice the first, per plateau variant
    with finished seeds in both, the seeds' mean last mIoU of each, the rise, the bound (the larger
    seed-sd, at least PLATEAU_FLOOR) and whether the shorter schedule had converged (rise < bound)."""
    def epochs(record):
        counts = {item['epochs'] for item in record['schedule_rule'].values() if item}
        return counts.pop() if len(counts) == 1 else None

    def other_opts(record):
        return record['config'], tuple(sorted(o for o in record['opts'] if not o.startswith('nepochs=')))
    grids = sorted(((other_opts(r), epochs(r), r) for r in records if epochs(r) is not None),
                   key=lambda grid: grid[:2])
    rows = []
    for (opts, short_epochs, shorter) in grids:
        for (_, _, longer) in (g for g in grids if g[0] == opts and g[1] == 2 * short_epochs):
            for name in PLATEAU_VARIANTS:
                a, b = shorter['variants'].get(name), longer['variants'].get(name)
                if not (a and b and a['miou']['n'] and b['miou']['n']):
                    continue
                sds = [x['miou']['sd'] for x in (a, b) if x['miou']['sd'] is not None]
                bound = max([PLATEAU_FLOOR, *sds])
                rise = b['miou']['mean'] - a['miou']['mean']
                rows.append({'config': opts[0], 'opts': list(opts[1]), 'variant': name,
                             'epochs': [short_epochs, 2 * short_epochs], 'seeds': [a['miou']['n'], b['miou']['n']],
                             'last': [a['miou']['mean'], b['miou']['mean']], 'rise': rise, 'bound': bound,
                             'converged': rise < bound})
    return rows


def doubling_table(rows) -> str:
    """schedule_doubling's rows as a Markdown table."""
    lines = ['| config | variant | epochs | seeds | last mIoU | rise | bound | converged at the shorter |',
             '|---|---|---|---|---|---|---|---|']
    for row in rows:
        opts = ' '.join(row['opts'])
        lines.append(f'| {row["config"]}{" " + opts if opts else ""} | {row["variant"]} | '
                     f'{row["epochs"][0]} → {row["epochs"][1]} | {row["seeds"][0]}, {row["seeds"][1]} | '
                     f'{figure(row["last"][0])} → {figure(row["last"][1])} | {figure(row["rise"], True)} | '
                     f'{figure(row["bound"])} | {"yes" if row["converged"] else "no"} |')
    return '\n'.join(lines) + '\n'


def plot_curves(curves, order, path, title):
    """Test mIoU against epoch per variant (the seeds' mean, each seed faint) and the training loss;
    a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure_, (miou_axis, loss_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for k, name in enumerate(order):
        seed_curves = [curve for (variant, _), curve in sorted(curves.items()) if variant == name and curve]
        if not seed_curves:
            continue
        colour = colours[k % len(colours)]
        for axis, key, scale in ((miou_axis, 'miou', 100), (loss_axis, 'loss', 1)):
            series = [{r['epoch']: scale * r[key] for r in curve if key in r} for curve in seed_curves]
            for values in series:
                axis.plot(list(values), list(values.values()), color=colour, alpha=0.25, linewidth=0.8)
            common = sorted(set.intersection(*(set(values) for values in series)))
            if common:
                axis.plot(common, [numpy.mean([values[e] for values in series]) for e in common], color=colour,
                          label=f'{name} ({len(series)} seed{"s" if len(series) > 1 else ""})')
    miou_axis.set(xlabel='epoch', ylabel='test mIoU (%)', title='test mIoU (evaluated every epoch)')
    loss_axis.set(xlabel='epoch', ylabel='training loss (epoch mean)', title='training loss', yscale='log')
    miou_axis.legend(fontsize=8)
    miou_axis.grid(alpha=0.3)
    loss_axis.grid(alpha=0.3)
    figure_.suptitle(title)
    figure_.tight_layout()
    figure_.savefig(path, dpi=110)
    plt.close(figure_)


def grid_record(config, opts, seeds, teacher_file, out):
    """What a grid was asked to run, for results.json."""
    return {'config': repo_path(config), 'opts': opts, 'seeds': seeds,
            'teacher_file': teacher_file and repo_path(teacher_file), 'out': repo_path(out)}


def add_bootstrap(summary, cells, order, reference, image_hists):
    """Each variant's bootstrap over the test images of its paired difference to the reference
    (last checkpoints); `image_hists(cell)` gives a cell's per-image confusion matrices."""
    by_key = {(cell.variant, cell.seed): cell for cell in cells if os.path.isfile(cell.result_path)}
    for name in order:
        seeds = [s for (v, s) in by_key if v == name and (reference, s) in by_key]
        if name == reference or not seeds:
            continue
        summary[name]['bootstrap'] = paired_image_bootstrap([image_hists(by_key[name, s]) for s in seeds],
                                                            [image_hists(by_key[reference, s]) for s in seeds])


def write_report(cells, order, variants, reference, out, grid, image_hists=None, plot=True):
    """DIR/results.json, DIR/table.md and DIR/curves.png from the finished cells; returns the Markdown.
    With `image_hists` (see add_bootstrap) the differences also get a bootstrap over the test images."""
    results, curves = read_results(cells), read_curves(cells)
    summary, class_names = summarise(results, curves, cells, order, reference)
    if image_hists is not None:
        add_bootstrap(summary, cells, order, reference, image_hists)
    schedule = schedule_evidence(curves, summary)
    table = markdown_tables(summary, class_names, order, variants, reference, grid['seeds'], grid['config'],
                            schedule)
    record = {**grid, 'reference': reference, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'versions': versions(), 'units': 'mIoU, IoU and pixel accuracy in percent',
              'class_names': class_names, 'schedule_rule': schedule,
              'variants': {name: {**dataclasses.asdict(variants[name]), **summary[name]} for name in order},
              'cells': [{'variant': cell.variant, 'seed': cell.seed, 'folder': repo_path(cell.folder),
                         'finished': (cell.variant, cell.seed) in results,
                         'commands': [shlex.join(cell.train_command), shlex.join(cell.val_command)],
                         'curve': curves[cell.variant, cell.seed],
                         'hist': results.get((cell.variant, cell.seed), {}).get('hist')}
                        for cell in cells]}
    write_json(os.path.join(out, RESULTS_FILE), record)
    atomic_write(os.path.join(out, TABLE_FILE), table, durable=False)
    if plot and any(curves.values()):
        plot_curves(curves, order, os.path.join(out, CURVES_FILE), f'{grid["config"]} {" ".join(grid["opts"])}')
    return table


def git_version():
    """The commit of the repository, with -dirty for uncommitted changes; None outside git."""
    try:
        return subprocess.run(['git', 'describe', '--always', '--dirty', '--abbrev=40'], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def versions():
    return {**library_versions(torch.device('cpu'), 'torchvision', 'numpy', 'scipy'),
            'python': platform.python_version(), 'platform': platform.platform(), 'git': git_version()}
