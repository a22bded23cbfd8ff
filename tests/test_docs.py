"""The manual (README.md and docs/*.md) against the code and the measurements.

What is checked, for every command of every fenced ```bash block:
* the script it runs exists (train.sh / val.sh / test.sh, a `python SCRIPT.py`, a `python -m MODULE`),
  and so does every `config/*.py` it names;
* every flag it passes (`--name`, `-x`) appears in that script's `--help` (one `--help` per script,
  cached). `bash train.sh` and `bash val.sh` pass their flags to train.py / val.py; `bash train.sh
  config/demo.py` without `--mode` runs tools/demo.py. Flags of `bash test.sh` are pytest's and are
  not checked; commands of other programs (pip, pip-compile, tensorboard) are only listed in
  EXTERNAL_PROGRAMS, so a new kind of command fails until it is looked at.

What is run (RUN_COMMANDS): the commands that take seconds and need neither data, weights nor a
trained checkpoint -- printing a resolved config and generating the synthetic rooms (into a temporary
folder instead of datasets/). Every other command trains, evaluates or converts real data, needs
files that are not in git (datasets, pretrained weights, checkpoints) or takes minutes, so it is only
checked as above.

Also: the README stays at most README_MAX_LINES lines, relative links and their #anchors resolve,
backticked repository paths exist, and the figures the README quotes from benchmarks/ match the files.
"""
import functools
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from config import REPO_ROOT

README_MAX_LINES = 200
DOC_FILES = ['README.md'] + sorted(os.path.join('docs', name) for name in os.listdir(os.path.join(REPO_ROOT, 'docs'))
                                   if name.endswith('.md'))
# Pages other engineers write; links to them are checked once they exist.
PENDING_PAGES = {'docs/architecture.md', 'docs/gpu_check.md'}
EXTERNAL_PROGRAMS = {'pip', '.venv/bin/pip-compile', 'tensorboard'}
PYTHONS = {'python', 'python3', '.venv/bin/python'}
LAUNCHERS = {'train.sh': 'train.py', 'val.sh': 'val.py', 'tools/gpu_check.sh': 'tools/gpu_check.py'}
# Commands of the docs that the test runs, as written there; {tmp} replaces an output folder.
RUN_COMMANDS = {
    'python -m config config/nyu_b4.py': None,
    'python -m config config/nyu_b2.py --opts lr=1e-4': None,
    '.venv/bin/python tools/make_synthetic.py --out datasets/Synthetic --num-train 200 --num-test 50 --seed 12345':
        ('datasets/Synthetic', '{tmp}/Synthetic'),
}


def read(path):
    with open(os.path.join(REPO_ROOT, path), encoding='utf-8') as f:
        return f.read()


def bash_blocks(text):
    return re.findall(r'^```bash\n(.*?)^```', text, flags=re.S | re.M)


def doc_commands():
    """[(doc file, command text, tokens)] for every command of every ```bash block."""
    commands = []
    for doc in DOC_FILES:
        for block in bash_blocks(read(doc)):
            for line in block.replace('\\\n', ' ').splitlines():
                tokens = shlex.split(line, comments=True)
                command = []
                for token in tokens + ['&&']:
                    if token in ('&&', ';', '||'):
                        if command:
                            commands.append((doc, shlex.join(command), command))
                        command = []
                    else:
                        command.append(token)
    return commands


def strip_env(tokens):
    tokens = list(tokens)
    while tokens and re.fullmatch(r'[A-Z_][A-Z0-9_]*=\S*', tokens[0]):
        tokens.pop(0)
    return tokens


def target(tokens):
    """(kind, script, arguments): kind 'script' (a file run with python), 'module' (python -m),
    'pytest' (test.sh) or 'external'."""
    tokens = strip_env(tokens)
    program, rest = tokens[0], tokens[1:]
    if program == 'bash':
        launcher, args = rest[0], rest[1:]
        assert os.path.isfile(os.path.join(REPO_ROOT, launcher)), launcher
        if launcher == 'test.sh':
            return 'pytest', launcher, args
        script = LAUNCHERS[launcher]
        if launcher == 'train.sh' and args[:1] == ['config/demo.py'] and '--mode' not in args:
            script = 'tools/demo.py'
        return 'script', script, args
    if program in PYTHONS:
        if rest[0] == '-m':
            return 'module', rest[1], rest[2:]
        if rest[0] == '-c':
            return 'external', program, rest
        return 'script', rest[0], rest[1:]
    return 'external', program, rest


def flags(args):
    found = []
    for arg in args:
        arg = arg.strip('[]')
        if re.match(r'--?[A-Za-z]', arg):
            found.append(arg.split('=', 1)[0])
    return found


@functools.lru_cache(maxsize=None)
def help_text(kind, script):
    command = [sys.executable] + (['-m', script] if kind == 'module' else [script]) + ['--help']
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f'{" ".join(command)} failed:\n{result.stderr[-2000:]}'
    return result.stdout


COMMANDS = doc_commands()


def test_readme_is_short():
    lines = read('README.md').count('\n')
    assert lines <= README_MAX_LINES, f'README.md has {lines} lines; move content to docs/ (at most {README_MAX_LINES})'


def test_docs_have_commands():
    assert len(COMMANDS) > 40
    assert {doc for doc, _, _ in COMMANDS} >= {'README.md', 'docs/training.md', 'docs/evaluation.md'}


@pytest.mark.parametrize('doc, command, tokens', COMMANDS, ids=[f'{d}: {c[:60]}' for d, c, _ in COMMANDS])
def test_command_names_existing_files(doc, command, tokens):
    kind, script, args = target(tokens)
    if kind == 'external':
        assert script in EXTERNAL_PROGRAMS, f'{doc}: unknown program in `{command}`'
        return
    if kind == 'script':
        assert os.path.isfile(os.path.join(REPO_ROOT, script)), f'{doc}: `{command}`: no {script}'
    if kind == 'module':
        assert os.path.exists(os.path.join(REPO_ROOT, *script.split('.'))), f'{doc}: no module {script}'
    for arg in args:
        if re.fullmatch(r'config/\w+\.py', arg):
            assert os.path.isfile(os.path.join(REPO_ROOT, arg)), f'{doc}: `{command}`: no {arg}'


def _flag_cases():
    by_script = {}
    for doc, command, tokens in COMMANDS:
        kind, script, args = target(tokens)
        if kind in ('script', 'module'):
            by_script.setdefault((kind, script), []).append((doc, command, flags(args)))
    return sorted(by_script.items())


@pytest.mark.integration
@pytest.mark.parametrize('script, uses', _flag_cases(), ids=[s for (_, s), _ in _flag_cases()])
def test_flags_are_accepted(script, uses):
    text = help_text(*script)
    for doc, command, used in uses:
        for flag in used:
            assert re.search(rf'(?<![\w-]){re.escape(flag)}(?![\w-])', text), \
                f'{doc}: `{command}`: {script[1]} --help has no {flag}'


def test_run_commands_are_in_the_docs():
    written = {command for _, command, _ in COMMANDS}
    for command in RUN_COMMANDS:
        assert shlex.join(shlex.split(command)) in written, f'not in the docs any more: {command}'


@pytest.mark.integration
@pytest.mark.parametrize('command', list(RUN_COMMANDS))
def test_cheap_commands_run(command, tmp_path):
    replace = RUN_COMMANDS[command]
    if replace:
        command = command.replace(replace[0], replace[1].format(tmp=tmp_path))
    tokens = shlex.split(command)
    if tokens[0] in PYTHONS:
        tokens[0] = sys.executable
    result = subprocess.run(tokens, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f'`{command}` failed:\n{result.stdout[-1000:]}\n{result.stderr[-2000:]}'
    if 'make_synthetic' in command:
        folder = tmp_path / 'Synthetic'
        assert len((folder / 'train.txt').read_text().split()) == 200
        assert len((folder / 'test.txt').read_text().split()) == 50
    else:
        assert 'lr' in result.stdout


def slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r'[`*_]', '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(path):
    return {slug(h) for h in re.findall(r'^#+ (.*)$', read(path), flags=re.M)}


def without_code(text):
    return re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)


@pytest.mark.parametrize('doc', DOC_FILES)
def test_links_resolve(doc):
    for link in re.findall(r'\]\(([^)\s]+)\)', without_code(read(doc))):
        if re.match(r'[a-z]+://', link):
            continue
        path, _, anchor = link.partition('#')
        target_path = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if target_path in PENDING_PAGES and not os.path.exists(os.path.join(REPO_ROOT, target_path)):
            continue
        assert os.path.exists(os.path.join(REPO_ROOT, target_path)), f'{doc}: broken link {link}'
        if anchor and target_path.endswith('.md'):
            assert anchor in anchors(target_path), f'{doc}: no heading #{anchor} in {target_path}'


REPO_PATH = re.compile(r'(?:config|tools|models|engine|utils|dataloader|benchmarks|tests|docs)/[\w./-]*')


@pytest.mark.parametrize('doc', DOC_FILES)
def test_backticked_paths_exist(doc):
    for code in re.findall(r'`([^`\n]+)`', without_code(read(doc))):
        for token in code.split():
            if not REPO_PATH.fullmatch(token) or re.search(r'[A-Z]{3,}', token):
                continue
            if token in PENDING_PAGES:
                continue
            assert os.path.exists(os.path.join(REPO_ROOT, token)), f'{doc}: `{token}` does not exist'


@pytest.mark.parametrize('grid', ['ablate_depth_decisive', 'ablate_nyu_like'])
def test_readme_figures_match_benchmarks(grid):
    difference = grid_json(grid)['variants']['primkd']['difference']
    quoted = f"{difference['mean']:.1f} mIoU ([{difference['low']:.1f}, {difference['high']:.1f}])"
    quoted_short = f"{difference['mean']:.1f} ([{difference['low']:.1f}, {difference['high']:.1f}])"
    readme = ' '.join(read('README.md').split())
    assert quoted in readme or quoted_short in readme, f'README.md does not quote benchmarks/{grid}.json: {quoted}'


def test_the_200_epoch_figures_of_readme_and_results_md_recompute():
    """The prose around the 200-epoch table: PrimKD's differences to CMX under both protocols and the
    bootstrap, the per-seed differences, the classes, best - last and the last-third gains."""
    record = grid_record('schedule200_nyu_like')
    variants = record['variants']
    primkd, cmx, teacher = variants['primkd'], variants['cmx'], variants['rgb_teacher']
    d, best, boot = primkd['difference'], primkd['difference_best'], primkd['bootstrap']
    per_seed = [primkd['miou']['seeds'][s] - cmx['miou']['seeds'][s] for s in ('1', '2')]
    classes = primkd['class_iou_difference']
    rest = [abs(v) for c, v in classes.items() if c not in ('ball', 'crate', 'panel')]
    evidence = record['schedule_rule']
    readme = ' '.join(read('README.md').split())
    assert (f"PrimKD is {d['mean']:+.1f} above it on the last checkpoint ([{d['low']:+.1f}, {d['high']:+.1f}] "
            f"over seeds), but the bootstrap over the test images includes no difference "
            f"([{boot['low']:+.1f}, {boot['high']:+.1f}]) and on best-on-test it is {best['mean']:+.1f}") in readme
    assert boot['low'] < 0 < boot['high']
    text = ' '.join(read('docs/results.md').split())
    for claim in (
            f"(+{per_seed[0]:.2f}, +{per_seed[1]:.2f}) that the t interval over seeds is "
            f"[{d['low']:+.1f}, {d['high']:+.1f}]",
            f"{boot['mean']:+.1f} [{boot['low']:+.1f}, {boot['high']:+.1f}], which includes no difference",
            f"(ball, {classes['ball']:+.1f} IoU; crate {classes['crate']:+.1f}, panel {classes['panel']:+.1f}, "
            f"the rest within ±{max(rest):.1f})",
            f"the difference is gone**: {best['mean']:+.1f} [{best['low']:+.1f}, {best['high']:+.1f}]",
            f"CMX gains {cmx['best_minus_last']['mean']:.1f} from picking its best test epoch, PrimKD "
            f"{primkd['best_minus_last']['mean']:.1f}",
            f"The teacher is {-teacher['difference']['mean']:.1f} below CMX at 200 epochs",
            f"(+{evidence['cmx']['gain_last_third']:.1f} over the last third, seed sd "
            f"{evidence['cmx']['final_sd']:.1f}); **the teacher has not** "
            f"(+{evidence['rgb_teacher']['gain_last_third']:.1f},"):
        assert claim in text, claim


def short_grid_claims():
    """Every figure that results.md's "Does distillation help?" section quotes, as the text it is
    quoted in, rebuilt from benchmarks/ablate_*.json."""
    from utils.statistics import paired_interval
    dd, nyu = (grid_json(g)['variants'] for g in ('ablate_depth_decisive', 'ablate_nyu_like'))

    def diff(grid, name):
        d = grid[name]['difference']
        return d['mean'], f"[{d['low']:+.1f}, {d['high']:+.1f}]"

    def mean(grid, name):
        return grid[name]['miou']['mean']

    def classes(grid, name, *class_names):
        return [grid[name]['class_iou_difference'][c] for c in class_names]

    def paired(grid, name, reference):
        seeds = sorted(grid[name]['miou']['seeds'])
        m, low, high = paired_interval([grid[name]['miou']['seeds'][s] for s in seeds],
                                       [grid[reference]['miou']['seeds'][s] for s in seeds])
        return m, f'[{low:+.1f}, {high:+.1f}]'

    def ratio(grid):
        seeds = grid['rgb_teacher']['miou']['seeds']
        per_seed = [seeds[s] / grid['cmx']['miou']['seeds'][s] for s in seeds]
        return (f"{mean(grid, 'rgb_teacher') / mean(grid, 'cmx'):.3f} of the CMX baseline's mIoU" if grid is nyu
                else f"{mean(grid, 'rgb_teacher') / mean(grid, 'cmx'):.3f} on"), \
            f"({mean(grid, 'rgb_teacher'):.1f} against {mean(grid, 'cmx'):.1f}; per seed " \
            f"{min(per_seed):.3f}–{max(per_seed):.3f})"
    (p, p_iv), (pn, pn_iv) = diff(dd, 'primkd'), diff(nyu, 'primkd')
    gaps = ', '.join(f'{-diff(g, student)[0]:.1f} of {-diff(g, teacher)[0]:.1f}' for g, student, teacher in (
        (dd, 'primkd', 'rgb_teacher'), (dd, 'primkd_36ep_teacher', 'rgb_teacher_36ep'),
        (dd, 'wide_teacher', 'rgb_teacher_b1'), (nyu, 'primkd', 'rgb_teacher')))
    ball, panel, poster = classes(dd, 'primkd', 'ball', 'panel', 'poster')
    teacher_gaps = classes(dd, 'rgb_teacher', 'ball', 'panel', 'poster')
    t36 = dd['rgb_teacher_36ep']['miou']
    s36, s36_iv = diff(dd, 'primkd_36ep_teacher')
    panel36, poster36, ball36 = classes(dd, 'primkd_36ep_teacher', 'panel', 'poster', 'ball')
    tpanel36, tposter36, tball36 = classes(dd, 'rgb_teacher_36ep', 'panel', 'poster', 'ball')
    wide, wide_iv = paired(dd, 'rgb_teacher_b1', 'rgb_teacher')
    confident, confident_iv = paired(dd, 'kl_confident', 'alpha_0.3')
    claims = [*ratio(nyu), *ratio(dd),
              f'PrimKD is {-p:.1f} points below the CMX baseline on `depth_decisive` rooms ({p_iv})',
              f'{-pn:.1f} below on `nyu_like` rooms ({pn_iv})', f'({gaps} points)',
              f"(-{-diff(dd, 'kl_only')[0]:.1f} and -{-diff(nyu, 'kl_only')[0]:.1f})",
              '-%.1f (%s) on `depth_decisive`' % (-diff(dd, 'feat_only')[0], diff(dd, 'feat_only')[1]),
              '-%.1f (%s) on `nyu_like`' % (-diff(nyu, 'feat_only')[0], diff(nyu, 'feat_only')[1]),
              ', '.join(f'{diff(dd, n)[0]:.1f} at {a}' for n, a in (('feat_only', 'alpha 0'), ('alpha_0.1', '0.1'),
                                                                    ('alpha_0.3', '0.3'))),
              f"and {diff(dd, 'primkd')[0]:.1f} at 1, the paper's",
              f'balls ({ball:.1f} IoU), panels ({panel:.1f}) and posters ({poster:.1f})',
              f'{-max(teacher_gaps):.0f} to {-min(teacher_gaps):.0f} points below the baseline',
              f"gains {t36['mean'] - mean(dd, 'rgb_teacher'):.1f} points ({t36['mean']:.1f} ± {t36['sd']:.1f})",
              f'lands {-s36:.1f} below the baseline ({s36_iv})',
              f"still {-diff(dd, 'rgb_teacher_36ep')[0]:.1f} points below the baseline",
              f'panels ({panel36:.1f} IoU) and posters ({poster36:.1f}), where that teacher is {-tpanel36:.0f} '
              f'and {-tposter36:.0f} points below the baseline, and on balls ({ball36:.1f}), although the teacher '
              f'is only {-tball36:.1f} below there',
              '`rgbx_teacher`: the same seed\'s RGB-D baseline, fused features as targets) costs %.1f points (%s)'
              % (-diff(dd, 'rgbx_teacher')[0], diff(dd, 'rgbx_teacher')[1]),
              f"{mean(dd, 'rgb_teacher_b1'):.1f} ± {dd['rgb_teacher_b1']['miou']['sd']:.1f}) is {wide:.1f} points "
              f'above the B0 teacher, but that is not significant (paired interval {wide_iv})',
              'its student costs %.1f (%s)' % (-diff(dd, 'wide_teacher')[0], diff(dd, 'wide_teacher')[1]),
              'costs %.1f on `depth_decisive` (%s)' % (-diff(dd, 'kl_confident')[0], diff(dd, 'kl_confident')[1]),
              f'(`kl_confident` - `alpha_0.3`: {confident:+.1f}, {confident_iv})',
              'and %.1f on `nyu_like` (%s)' % (-diff(nyu, 'kl_confident')[0], diff(nyu, 'kl_confident')[1])]
    return [' '.join(claim.split()) for claim in claims]


def grid_json(name):
    with open(os.path.join(REPO_ROOT, 'benchmarks', f'{name}.json')) as f:
        return json.load(f)


def test_the_short_grid_figures_of_results_md_recompute():
    text = ' '.join(read('docs/results.md').split())
    missing = [claim for claim in short_grid_claims() if claim not in text]
    assert not missing, f'docs/results.md no longer quotes benchmarks/ablate_*.json as: {missing}'


def test_the_corruption_table_of_the_docs_is_the_codes():
    from dataloader.corruptions import markdown_table
    assert markdown_table() in read('docs/robustness.md')


GRID_RESULTS = sorted(name for name in os.listdir(os.path.join(REPO_ROOT, 'benchmarks'))
                      if os.path.isfile(os.path.join(REPO_ROOT, 'benchmarks', name, 'results.json')))


def grid_record(name):
    with open(os.path.join(REPO_ROOT, 'benchmarks', name, 'results.json')) as f:
        return json.load(f)


@pytest.mark.parametrize('name', GRID_RESULTS)
def test_the_grid_tables_of_results_md_are_the_benchmarks(name):
    from engine.ablation.report import docs_excerpt
    assert docs_excerpt(grid_record(name)) in read('docs/results.md'), \
        f'docs/results.md does not show benchmarks/{name}/results.json (paste docs_excerpt of it)'


def test_the_schedule_doubling_table_of_results_md_is_the_benchmarks():
    from engine.ablation.report import doubling_table, schedule_doubling
    assert doubling_table(schedule_doubling([grid_record(name) for name in GRID_RESULTS])) in read('docs/results.md'), \
        'docs/results.md does not show `python tools/schedule_rule.py benchmarks/*/results.json`'


def test_the_protocol_gaps_quoted_in_results_md_recompute():
    """The largest best - last and the largest change of a paired difference between the protocols,
    over every kept grid, are the figures the text quotes."""
    best_minus_last, moved = [], []
    for name in GRID_RESULTS:
        for entry in grid_record(name)['variants'].values():
            if entry['best_minus_last']['mean'] is not None:   # None: no finished seed
                best_minus_last.append(entry['best_minus_last']['mean'])
            if entry.get('difference') and entry.get('difference_best'):
                moved.append(abs(entry['difference_best']['mean'] - entry['difference']['mean']))
    text = ' '.join(read('docs/results.md').split())
    assert (f'adds at most {max(best_minus_last):.1f} points to any variant, and moves every paired difference '
            f'to CMX by at most {max(moved):.1f} points') in text


@pytest.mark.parametrize('name', sorted(n for n in os.listdir(os.path.join(REPO_ROOT, 'benchmarks'))
                                        if n.startswith('robustness_') and n.endswith('.json')))
def test_the_robustness_tables_of_the_docs_are_the_benchmarks(name):
    from engine.ablation.robustness_grid import docs_excerpt
    with open(os.path.join(REPO_ROOT, 'benchmarks', name)) as f:
        record = json.load(f)
    assert docs_excerpt(record) in read('docs/robustness.md'), f'docs/robustness.md does not show benchmarks/{name}'
