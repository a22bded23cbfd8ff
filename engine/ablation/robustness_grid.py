"""The grid under corrupted test inputs (tools/ablate.py --corrupt): every finished cell's last
checkpoint evaluated clean and under each corruption and severity (engine/robustness.py), kept per
cell so that a later run evaluates only what is new; then per variant the mean ± sd over seeds, and
per corruption the paired differences to the reference variant over seeds of the mIoU under the
corruption (mean over its severities) and of the drop from clean, with 95% Student-t intervals.

Files: DIR/<variant>/seed<N>/robustness.json (the cell's rows), DIR/robustness.json, .md and .png."""
import datetime
import json
import os

from dataloader.corruptions import CORRUPTIONS, markdown_table
from engine import robustness
from engine.evaluator import evaluate
from utils.io import atomic_write, write_json
from utils.statistics import seed_statistics

from .bootstrap import SINGLE_CPU, load_cell
from .report import interval, paired, spread, versions

CELL_ROBUSTNESS = 'robustness.json'   # in a cell folder
ROBUSTNESS_FILES = ('robustness.json', 'robustness.md', 'robustness.png')


def cell_robustness(cell, settings) -> dict:
    """{'clean': mIoU, 'rows': evaluate_corruptions rows} of a finished cell for `settings`; rows
    evaluated before are reused, new ones are added to the cell's robustness.json one by one."""
    path = os.path.join(cell.folder, CELL_ROBUSTNESS)
    record = {'clean': None, 'rows': []}
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
    done = {(row['corruption'], row['severity']) for row in record['rows']}
    missing = [s for s in settings if (s.name, s.severity) not in done]
    if record['clean'] is None or missing:
        model, cfg, dataset = load_cell(cell)
        if record['clean'] is None:
            record['clean'] = evaluate(model, cfg, SINGLE_CPU, dataset, progress=False)['miou']
            write_json(path, record)
        for setting in missing:
            print(f'{cell.name}: {setting}', flush=True)
            record['rows'] += robustness.evaluate_corruptions(model, cfg, SINGLE_CPU, dataset, [setting],
                                                              progress=False)
            write_json(path, record)
    wanted = {(s.name, s.severity) for s in settings}
    return {'clean': record['clean'], 'rows': [r for r in record['rows'] if (r['corruption'], r['severity']) in wanted]}


def _seed_figures(per_cell):
    """{seed: (clean, summary)} -> per seed the clean mIoU, and per corruption the mean over
    severities, the drop from clean (points) and each severity."""
    figures = {}
    for seed, (clean, summary) in per_cell.items():
        entry = {'clean': clean}
        for name, s in summary.items():
            if s['applicable']:
                entry[name] = {'mean': s['mean'], 'drop': clean - s['mean'], 'miou': s['miou']}
        figures[seed] = entry
    return figures


def summarise_robustness(per_variant, reference):
    """Per variant: mean/sd over seeds of clean and of each corruption (mean, drop, severities), and
    the paired differences to `reference` of the corrupted mIoU and of the drop (percent points)."""
    out = {}
    ref = _seed_figures(per_variant.get(reference, {}))
    for variant, per_cell in per_variant.items():
        figures = _seed_figures(per_cell)
        applicable = {name for name in CORRUPTIONS if all(name in f for f in figures.values()) and figures}
        names = [n for n in CORRUPTIONS if any(n in s for _, s in per_cell.values())]
        entry = {'seeds': sorted(figures), 'clean': seed_statistics({s: 100 * f['clean'] for s, f in figures.items()}),
                 'corruptions': {}}
        for name in names:
            if name not in applicable:
                entry['corruptions'][name] = {'applicable': False}
                continue
            severities = sorted({sev for f in figures.values() for sev in f[name]['miou']})
            stats = {'applicable': True,
                     'mean': seed_statistics({s: 100 * f[name]['mean'] for s, f in figures.items()}),
                     'drop': seed_statistics({s: 100 * f[name]['drop'] for s, f in figures.items()}),
                     'miou': {sev: seed_statistics({s: 100 * f[name]['miou'][sev] for s, f in figures.items()})
                              for sev in severities}}
            if variant != reference and ref and all(name in f for f in ref.values()):
                stats['vs_reference'] = {
                    'mean': paired({s: 100 * f[name]['mean'] for s, f in figures.items()},
                                   {s: 100 * f[name]['mean'] for s, f in ref.items()}),
                    'drop': paired({s: 100 * f[name]['drop'] for s, f in figures.items()},
                                   {s: 100 * f[name]['drop'] for s, f in ref.items()})}
            entry['corruptions'][name] = stats
        out[variant] = entry
    return out


def _fraction(percent):
    return None if percent is None else percent / 100


def _as_models(summary, key):
    """engine.robustness's {label: (clean, summary)} shape of the means (key 'mean') or sds ('sd'),
    as fractions."""
    models = {}
    for variant, entry in summary.items():
        corruptions = {}
        for name, s in entry['corruptions'].items():
            if not s['applicable']:
                corruptions[name] = {'applicable': False, 'miou': {}, 'mean': None, 'relative_drop': None}
                continue
            clean = entry['clean']['mean']
            value = s['mean'][key]
            corruptions[name] = {'applicable': True,
                                 'miou': {sev: _fraction(st[key]) for sev, st in s['miou'].items()},
                                 'mean': _fraction(value),
                                 'relative_drop': None if key != 'mean' else 1 - s['mean']['mean'] / clean}
        models[variant] = (_fraction(entry['clean'][key]), corruptions)
    return models


def robustness_markdown(summary, reference, config, seeds) -> str:
    means, sds = _as_models(summary, 'mean'), _as_models(summary, 'sd')
    names = [n for n in CORRUPTIONS if any(n in e['corruptions'] for e in summary.values())]
    lines = [f'# Robustness to corrupted test inputs: {config}, seeds {" ".join(map(str, seeds))}', '',
             'Last checkpoints, mean ± sd over seeds. `n/a`: the model takes no depth, so a depth corruption '
             'does not reach it (the RGB-only teacher gives its clean figure whatever the depth sensor does).',
             '', robustness.markdown_tables(means, {k: v for k, v in sds.items()}), '',
             f'## Paired differences to `{reference}` (percent points, 95% t interval over seeds)', '',
             'Corrupted: the mIoU under the corruption (mean over its severities), variant − reference. '
             'Drop: (clean − corrupted) of the variant minus that of the reference; negative = degrades less.',
             '', '| variant | ' + ' | '.join(f'`{n}` corrupted | `{n}` drop' for n in names) + ' |',
             '|---|' + '---|---|' * len(names)]
    for variant, entry in summary.items():
        if variant == reference:
            continue
        cells = []
        for name in names:
            s = entry['corruptions'].get(name, {'applicable': False})
            if not s['applicable']:
                cells += [robustness.NOT_APPLICABLE] * 2
            elif 'vs_reference' not in s:
                cells += ['–'] * 2   # the reference has no figures for it
            else:
                cells += [interval(s['vs_reference']['mean']), interval(s['vs_reference']['drop'])]
        lines.append(f'| {variant} | ' + ' | '.join(cells) + ' |')
    lines += ['', '## The corruptions', '', markdown_table(), '']
    return '\n'.join(lines)


def write_robustness(cells, order, reference, out, grid, settings) -> str:
    """Evaluates the finished cells under `settings` and writes DIR/robustness.{json,md,png}; returns
    the Markdown."""
    per_variant, cell_records = {}, []
    for cell in cells:
        if not os.path.isfile(cell.result_path):
            continue
        record = cell_robustness(cell, settings)
        per_variant.setdefault(cell.variant, {})[cell.seed] = (
            record['clean'], robustness.summarize(record['clean'], record['rows']))
        cell_records.append({'variant': cell.variant, 'seed': cell.seed, **record})
    per_variant = {name: per_variant[name] for name in order if name in per_variant}
    summary = summarise_robustness(per_variant, reference)
    table = robustness_markdown(summary, reference, grid['config'], grid['seeds'])
    json_path, md_path, png_path = (os.path.join(out, name) for name in ROBUSTNESS_FILES)
    write_json(json_path, {**grid, 'reference': reference, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
                           'versions': versions(), 'units': 'mIoU in percent (cells: fractions)',
                           'corruptions': {n: c._asdict() for n, c in CORRUPTIONS.items()},
                           'settings': [str(s) for s in settings], 'variants': summary, 'cells': cell_records})
    atomic_write(md_path, table, durable=False)
    robustness.plot(_as_models(summary, 'mean'), png_path, title=f'{grid["config"]} {" ".join(grid["opts"])}',
                    spread=_as_models(summary, 'sd'))
    return table


def docs_excerpt(record: dict, variants=('rgb_teacher', 'cmx', 'primkd')) -> str:
    """The table docs/robustness.md shows of a DIR/robustness.json (a test keeps the two equal): per
    corruption the mIoU under it (mean over severities, mean ± sd over seeds) of `variants`, and the
    paired differences of the last variant to the reference."""
    summary = {v: record['variants'][v] for v in variants if v in record['variants']}
    last, reference = list(summary)[-1], record['reference']
    seeds = ' '.join(map(str, record['seeds']))
    names = [n for n in CORRUPTIONS if any(n in e['corruptions'] for e in summary.values())]

    def stat(entry):
        return '–' if entry is None else spread(entry)

    lines = [f'| {record["config"]}, seeds {seeds} | ' + ' | '.join(summary) +
             f' | {last} − {reference}: corrupted | drop |', '|---|' + '---|' * (len(summary) + 2),
             '| clean | ' + ' | '.join(stat(e['clean']) for e in summary.values()) + ' | | |']
    for name in names:
        cells = []
        for entry in summary.values():
            s = entry['corruptions'].get(name, {'applicable': False})
            cells.append(stat(s['mean']) if s['applicable'] else robustness.NOT_APPLICABLE)
        pair = summary[last]['corruptions'].get(name, {}).get('vs_reference')
        cells += ['–', '–'] if pair is None else [interval(pair['mean']), interval(pair['drop'])]
        lines.append(f'| `{name}` | ' + ' | '.join(cells) + ' |')
    if 'depth_missing' in names:   # the sensor failed outright: no frame has depth
        cells = []
        for entry in summary.values():
            s = entry['corruptions'].get('depth_missing', {'applicable': False})
            cells.append(stat(s['miou'].get('5')) if s['applicable'] else f"{stat(entry['clean'])} (clean)")
        lines.append('| no depth at all (`depth_missing:5`) | ' + ' | '.join(cells) + ' | | |')
    return '\n'.join(lines) + '\n'
