"""A model's mIoU under the corruptions of dataloader/corruptions.py: the evaluation, the table of one
or several models (mIoU per corruption and severity, the mean over severities, the relative drop from
clean) and the plot of mIoU against severity, one line per model.

A depth corruption of a model without the extra modality (the RGB-only teacher) is not evaluated but
recorded as not applicable: that model sees no depth, so its clean figure is what it gives whatever
the depth sensor does.
"""
import os

import numpy as np

from dataloader.corruptions import CORRUPTIONS, DEPTH, SEVERITIES

from .evaluator import evaluate

NOT_APPLICABLE = 'n/a'


def applicable(setting, with_extra: bool) -> bool:
    return with_extra or setting.corruption.modality != DEPTH


def evaluate_corruptions(model, cfg, dist_info, dataset, settings, **evaluate_kwargs) -> list:
    """One row per setting: corruption, severity, level, applicable, and where applicable the
    evaluation's miou and hist (list) on `dataset` under that corruption."""
    rows = []
    for setting in settings:
        row = {'corruption': setting.name, 'severity': setting.severity, 'level': setting.level,
               'applicable': applicable(setting, dataset.with_extra)}
        if row['applicable']:
            result = evaluate(model, cfg, dist_info, dataset.with_corruption(setting), **evaluate_kwargs)
            row.update(miou=result['miou'], hist=result['hist'].tolist())
        rows.append(row)
    return rows


def summarize(clean_miou: float, rows) -> dict:
    """{corruption: {'miou': {severity: mIoU}, 'mean': over the severities evaluated,
    'relative_drop': 1 - mean / clean, 'applicable': bool}} in CORRUPTIONS order."""
    summary = {}
    for name in CORRUPTIONS:
        mine = [r for r in rows if r['corruption'] == name]
        if not mine:
            continue
        if not all(r['applicable'] for r in mine):
            summary[name] = {'applicable': False, 'miou': {}, 'mean': None, 'relative_drop': None}
            continue
        by_severity = {r['severity']: r['miou'] for r in sorted(mine, key=lambda r: r['severity'])}
        mean = float(np.mean(list(by_severity.values())))
        summary[name] = {'applicable': True, 'miou': by_severity, 'mean': mean,
                         'relative_drop': 1 - mean / clean_miou if clean_miou else None}
    return summary


def _cell(value, sd=None, scale=100.0):
    if value is None:
        return NOT_APPLICABLE
    return f'{scale * value:.1f}' + ('' if sd is None else f' ± {scale * sd:.1f}')


def markdown_tables(models: dict, spread: dict = None) -> str:
    """`models`: {label: (clean mIoU, summarize(...))}; `spread` optionally the same shape of sds.
    A table of the mean over severities (and relative drop) per corruption, then one of every
    severity per corruption."""
    names = [n for n in CORRUPTIONS if any(n in s for _, s in models.values())]
    spread = spread or {}

    def sd(label, name=None, severity=None, key='mean'):
        if label not in spread:
            return None
        clean, summary = spread[label]
        if name is None:
            return clean
        entry = summary.get(name, {})
        return entry.get('miou', {}).get(severity) if severity is not None else entry.get(key)

    lines = ['mIoU (%) over severities 1-5, and its drop relative to clean', '',
             '| model | clean | ' + ' | '.join(f'`{n}`' for n in names) + ' |',
             '|---|---|' + '---|' * len(names)]
    for label, (clean, summary) in models.items():
        cells = []
        for name in names:
            entry = summary.get(name)
            if entry is None or not entry['applicable']:
                cells.append(NOT_APPLICABLE)
            else:
                cells.append(f"{_cell(entry['mean'], sd(label, name))} ({-100 * entry['relative_drop']:+.0f}%)")
        lines.append(f'| {label} | {_cell(clean, sd(label))} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'mIoU (%) per severity (0 = clean)', '',
              '| corruption | model | ' + ' | '.join(str(s) for s in (0, *SEVERITIES)) + ' |',
              '|---|---|' + '---|' * (1 + len(SEVERITIES))]
    for name in names:
        for label, (clean, summary) in models.items():
            entry = summary.get(name)
            if entry is None:
                continue
            values = [_cell(clean, sd(label))] + [
                _cell(entry['miou'][s], sd(label, name, s)) if s in entry['miou'] else
                (NOT_APPLICABLE if not entry['applicable'] else '') for s in SEVERITIES]
            lines.append(f'| `{name}` | {label} | ' + ' | '.join(values) + ' |')
    return '\n'.join(lines) + '\n'


def plot(models: dict, path: str, title: str = '', spread: dict = None) -> None:
    """A PNG: a panel per corruption, mIoU against severity (0 = clean), one line per model; a model
    for which a corruption is not applicable is drawn flat at its clean figure, dashed."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = [n for n in CORRUPTIONS if any(n in s for _, s in models.values())]
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), squeeze=False,
                                sharey=True)
    spread = spread or {}
    for axis, name in zip(axes.flat, names):
        for index, (label, (clean, summary)) in enumerate(models.items()):
            entry = summary.get(name)
            if entry is None:
                continue
            colour = f'C{index}'
            if not entry['applicable']:
                axis.plot([0, SEVERITIES[-1]], [100 * clean] * 2, '--', color=colour, label=f'{label} ({NOT_APPLICABLE})')
                continue
            severities = [0, *entry['miou']]
            values = np.array([clean, *entry['miou'].values()]) * 100
            axis.plot(severities, values, 'o-', color=colour, label=label, markersize=3)
            if label in spread:
                sd_clean, sd_summary = spread[label]
                sds = np.array([sd_clean, *sd_summary[name]['miou'].values()], dtype=float) * 100
                sds = np.nan_to_num(sds)  # one seed: no spread
                axis.fill_between(severities, values - sds, values + sds, color=colour, alpha=0.15)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel('severity')
        axis.set_xticks([0, *SEVERITIES])
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel('mIoU (%)')
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
