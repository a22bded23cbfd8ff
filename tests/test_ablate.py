"""tools/ablate.py: the paired interval against a hand computation, the order of cells, the
summary of finished cells, a real grid killed after its first cell and run again, and bad input
stopped with one line before any work."""
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from unittest import mock

import numpy
import pytest

from utils.statistics import paired_interval

from config import REPO_ROOT
from engine import ablation as ablate
from tools import ablate as ablate_tool
from dataloader.synthetic_rooms import make_synthetic_dataset
from helpers import DEMO_CONFIG, locked_by_another_process, tiny_opts


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data') / 'Synthetic')
    make_synthetic_dataset(root, num_train=8, num_test=4, height=64, width=64, seed=3)
    return root


def grid_opts(dataset, **extra):
    """tiny_opts without log_dir: the grid gives every cell its own."""
    return [o for o in tiny_opts(dataset, None, **{'nepochs': 1, **extra}) if not o.startswith('log_dir=')]


def test_paired_interval_matches_a_hand_computation():
    # Differences 1, 2, 0, 6: mean 2.25, sd sqrt(20.75 / 3) = 2.62996, t(0.975, 3) = 3.18245 (tables),
    # half width 3.18245 * 2.62996 / 2 = 4.18484.
    mean, low, high = paired_interval([70, 72, 71, 75], [69, 70, 71, 69])
    assert mean == pytest.approx(2.25)
    assert low == pytest.approx(2.25 - 4.18484, abs=1e-4) and high == pytest.approx(2.25 + 4.18484, abs=1e-4)
    # Two pairs, differences 1 and 3: sd sqrt(2), t(0.975, 1) = 12.7062, half width 12.7062.
    assert paired_interval([2, 5], [1, 2]) == pytest.approx((2, 2 - 12.7062, 2 + 12.7062), abs=1e-3)
    assert paired_interval([3.5], [1.0]) == (2.5, None, None)


def test_teachers_run_before_their_students():
    variants = ablate.BUILT_IN_VARIANTS
    assert ablate.grid_order(['cmx', 'primkd'], 'cmx', variants, False) == ['rgb_teacher', 'cmx', 'primkd']
    assert ablate.grid_order(['kl_only', 'primkd'], 'cmx', variants, False) == ['rgb_teacher', 'cmx', 'kl_only',
                                                                                 'primkd']
    # With --teacher PATH the rgb_teacher cells are not part of the grid.
    assert ablate.grid_order(['primkd'], 'cmx', variants, True) == ['cmx', 'primkd']
    chained = {**variants, 'second': ablate.Variant(teacher='primkd')}
    assert ablate.grid_order(['second'], 'cmx', chained, False) == ['rgb_teacher', 'cmx', 'primkd', 'second']
    cycle = {**variants, 'a': ablate.Variant(teacher='b'), 'b': ablate.Variant(teacher='a')}
    with pytest.raises(ablate.GridError, match='cycle'):
        ablate.grid_order(['a'], 'cmx', cycle, False)


def fake_cell(folder, variant, seed, miou, iou):
    cell = ablate.Cell(variant, seed, str(folder / variant / f'seed{seed}'), 'student', [], [], {})
    os.makedirs(cell.folder)
    with open(cell.result_path, 'w') as f:
        json.dump({'miou': miou, 'pixel_acc': 0.5, 'iou': iou, 'class_names': ['a', 'b']}, f)
    return cell


def test_summary_pairs_seeds_and_skips_undefined_classes(tmp_path):
    cells = [fake_cell(tmp_path, 'cmx', 1, 0.60, [0.5, 0.7]), fake_cell(tmp_path, 'cmx', 2, 0.62, [0.6, None]),
             fake_cell(tmp_path, 'primkd', 1, 0.58, [0.4, 0.8]), fake_cell(tmp_path, 'primkd', 2, 0.65, [0.5, 0.9])]
    summary, class_names = ablate.summarise(ablate.read_results(cells), {}, cells, ['cmx', 'primkd'], 'cmx')
    assert class_names == ['a', 'b']
    primkd = summary['primkd']
    assert primkd['miou']['seeds'] == {'1': pytest.approx(58), '2': pytest.approx(65)}
    assert primkd['miou']['mean'] == pytest.approx(61.5) and primkd['miou']['sd'] == pytest.approx(4.94975, abs=1e-4)
    # Differences -2 and +3: mean 0.5, sd 3.53553, half width 12.7062 * 3.53553 / sqrt(2) = 31.7655.
    assert primkd['difference']['mean'] == pytest.approx(0.5)
    assert primkd['difference']['high'] == pytest.approx(0.5 + 31.7655, abs=1e-3)
    # Class a: -10 and -10; class b: +10 (seed 2 has no cmx figure for it).
    assert primkd['class_iou_difference'] == {'a': pytest.approx(-10), 'b': pytest.approx(10)}
    assert 'difference' not in summary['cmx']


def curve_cell(folder, variant, seed, mious, last_miou):
    """A finished cell whose run directory holds a learning curve of test mIoUs (fractions)."""
    cell = fake_cell(folder, variant, seed, last_miou, [last_miou, last_miou])
    run = os.path.join(cell.folder, cell.mode)
    os.makedirs(run)
    with open(os.path.join(run, 'metrics.jsonl'), 'w') as f:
        for epoch, miou in enumerate(mious, 1):
            f.write(json.dumps({'epoch': epoch, 'loss': 1.0 / epoch, **({'miou': miou} if miou is not None else {})})
                    + '\n')
    return cell


def test_last_and_best_on_test_are_reported_side_by_side(tmp_path):
    cells = [curve_cell(tmp_path, 'cmx', 1, [0.5, 0.7, 0.6], 0.6),
             curve_cell(tmp_path, 'cmx', 2, [0.4, 0.5, 0.62], 0.62),
             curve_cell(tmp_path, 'kd', 1, [0.3, 0.66, 0.64], 0.64),
             curve_cell(tmp_path, 'kd', 2, [0.6, None, 0.55], 0.55)]
    curves = ablate.report.read_curves(cells)
    summary, _ = ablate.summarise(ablate.read_results(cells), curves, cells, ['cmx', 'kd'], 'cmx')
    cmx, kd = summary['cmx'], summary['kd']
    assert cmx['best_miou']['seeds'] == {'1': pytest.approx(70), '2': pytest.approx(62)}
    assert cmx['best_epoch'] == {'1': 2, '2': 3}
    assert kd['best_miou']['seeds'] == {'1': pytest.approx(66), '2': pytest.approx(60)}
    assert kd['best_minus_last']['mean'] == pytest.approx((2 + 5) / 2)
    # last: kd - cmx = +4 and -7; best: -4 and -2 (another conclusion, both as measured).
    assert kd['difference']['mean'] == pytest.approx(-1.5) and kd['difference_best']['mean'] == pytest.approx(-3)
    table = ablate.report.markdown_tables(summary, ['a', 'b'], ['cmx', 'kd'], ablate.BUILT_IN_VARIANTS, 'cmx',
                                          [1, 2], 'c.py')
    assert '| kd | student | 59.5 ± 6.4 | 63.0 ± 4.2 | +3.5 | -1.5 [' in table
    assert '| kd | 64.0 / 66.0 (2) | 55.0 / 60.0 (1) |' in table


def test_schedule_rule_by_hand(tmp_path):
    # Teacher seeds over 6 epochs; two thirds = epoch 4, each end the mean of 3 evaluated epochs.
    a = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]   # at 4: (20+30+40)/3 = 30, at 6: 50
    b = [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]   # at 4: 30, at 6: (40+50+50)/3 = 46.67
    cells = [curve_cell(tmp_path, 'rgb_teacher', 1, a, 0.6), curve_cell(tmp_path, 'rgb_teacher', 2, b, 0.5)]
    # Seed 3 is still training (no result.json): its 2 epochs neither shorten the schedule nor count.
    training = curve_cell(tmp_path, 'rgb_teacher', 3, [0.9, 0.9], 0.9)
    os.remove(training.result_path)
    cells.append(training)
    curves = ablate.report.read_curves(cells)
    summary, _ = ablate.summarise(ablate.read_results(cells), curves, cells, ['rgb_teacher'], 'rgb_teacher')
    rule = ablate.report.schedule_evidence(curves, summary)
    teacher = rule['rgb_teacher']
    assert teacher['at_two_thirds'] == pytest.approx(30) and teacher['at_end'] == pytest.approx((50 + 140 / 3) / 2)
    # gain 18.3 against a final sd of 7.07: still improving.
    assert teacher['final_sd'] == pytest.approx(7.0711, abs=1e-3) and teacher['plateau'] is False
    assert (teacher['epochs'], teacher['seeds']) == (6, 2)
    assert rule['cmx'] is None


def write_curve(cell, seconds, epochs):
    """A cell as train.py leaves it after `epochs` epochs: its spec and metrics.jsonl, timed with
    `seconds` per epoch (None: untimed, as an earlier version wrote them)."""
    os.makedirs(os.path.join(cell.folder, cell.mode))
    with open(os.path.join(cell.folder, ablate.CELL_SPEC), 'w') as f:
        json.dump(cell.spec, f)
    with open(os.path.join(cell.folder, cell.mode, 'metrics.jsonl'), 'w') as f:
        for epoch in range(1, epochs + 1):
            timed = {} if seconds is None else {'seconds': seconds}
            f.write(json.dumps({'epoch': epoch, 'loss': 1.0, 'miou': 0.5 + epoch / 100, **timed}) + '\n')


def test_status_says_where_each_cell_stands_without_touching_it(dataset, tmp_path):
    out = tmp_path / 'grid'
    opts = grid_opts(dataset, nepochs=10)
    order, cells = ablate.plan_grid(DEMO_CONFIG, ['cmx'], [1, 2, 3, 4], str(out), opts, 'cmx')
    assert order == ['cmx']
    finished, training, stopped, new = cells
    write_curve(finished, 3.0, 10)
    with open(finished.result_path, 'w') as f:
        json.dump({'miou': 0.61}, f)
    write_curve(training, 4.0, 4)
    write_curve(stopped, None, 6)
    holder, release = locked_by_another_process(os.path.join(training.folder, 'student'))
    dead, die = locked_by_another_process(os.path.join(stopped.folder, 'student'), die=True)
    die.set()
    dead.join(60)
    assert os.path.exists(os.path.join(stopped.folder, 'student', 'run.lock'))   # left by a killed run
    before = sorted(str(p) for p in out.rglob('*'))
    try:
        proc = subprocess.run([sys.executable, 'tools/ablate.py', '-c', DEMO_CONFIG, '--variants', 'cmx',
                               '--seeds', '1', '2', '3', '4', '--out', str(out), '--status', '--opts', *opts],
                              cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True)
        after = sorted(str(p) for p in out.rglob('*'))
    finally:
        release.set()
        holder.join(60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split(' | ')[0].lstrip('| '): line.split(' | ')[1:] for line in proc.stdout.splitlines()
            if line.startswith('| cmx seed')}
    assert rows['cmx seed 1'] == ['finished', '10/10', '61.0 (last checkpoint)', '60.0 (10)', '3.0', '– |']
    assert rows['cmx seed 2'][0] == f'training (pid {holder.pid} on {socket.gethostname()})'
    # 6 epochs left at its own 4 s.
    assert rows['cmx seed 2'][1:] == ['4/10', '54.0 (epoch 4)', '54.0 (4)', '4.0', '24 s |']
    # Untimed epochs: its variant's timed cells' mean rate, (3 + 4) / 2 s, for 4 epochs left.
    assert rows['cmx seed 3'] == ['stopped: continues when the command is run again', '6/10', '56.0 (epoch 6)',
                                  '56.0 (6)', "3.5 (its variant's)", '14 s |']
    assert rows['cmx seed 4'] == ['not started', '0/10', '–', '–', "3.5 (its variant's)", '35 s |']
    # 6 x 4 + 4 x 3.5 + 10 x 3.5 = 73 s.
    assert proc.stdout.rstrip().endswith('1 of 4 cells finished; the others need about 73 s of cell time')
    assert after == before   # nothing written, nothing started


def grid_of(epochs, opts, **last):
    """A results.json record with the given seeds' last mIoU per variant."""
    variants = {name: {'miou': {'n': len(values), 'mean': statistics.mean(values),
                                'sd': statistics.stdev(values) if len(values) > 1 else None}}
                for name, values in last.items()}
    return {'config': 'config/demo.py', 'opts': [f'nepochs={epochs}', *opts], 'variants': variants,
            'schedule_rule': {name: {'epochs': epochs} for name in last}}


def test_schedule_doubling_rule_by_hand():
    records = [grid_of(50, ['eval_step=1'], rgb_teacher=[70.0, 72.0], cmx=[80.0, 80.2]),
               grid_of(100, ['eval_step=1'], rgb_teacher=[75.0, 77.0], cmx=[80.5]),
               grid_of(100, [], rgb_teacher=[60.0, 61.0]),      # other options: no partner
               grid_of(150, ['eval_step=1'], rgb_teacher=[90.0, 90.0])]   # 1.5x, not a doubling
    rows = ablate.report.schedule_doubling(records)
    assert [(r['variant'], r['epochs']) for r in rows] == [('rgb_teacher', [50, 100]), ('cmx', [50, 100])]
    teacher, cmx = rows
    # Teacher: +5 against the larger sd, sqrt(2) = 1.41: still improving.
    assert teacher['rise'] == pytest.approx(5) and teacher['bound'] == pytest.approx(2 ** 0.5)
    assert teacher['converged'] is False
    # CMX: +0.4; its sds (0.14, one seed) are below the 1-point floor, which is the bound: converged.
    assert cmx['rise'] == pytest.approx(0.4) and cmx['bound'] == ablate.report.PLATEAU_FLOOR and cmx['converged']
    table = ablate.report.doubling_table(rows)
    assert '| config/demo.py eval_step=1 | rgb_teacher | 50 → 100 | 2, 2 | 71.0 → 76.0 | +5.0 | 1.4 | no |' in table
    assert '| cmx | 50 → 100 | 2, 1 | 80.1 → 80.5 | +0.4 | 1.0 | yes |' in table


def test_schedule_rule_tool_refuses_what_is_not_a_grid(tmp_path):
    from tools import schedule_rule
    other = tmp_path / 'benchmark.json'
    other.write_text('{"rows": []}')
    for argv, expected in (([str(tmp_path / 'missing.json')], "missing.json': cannot read a grid's results.json"),
                           ([str(other)], 'not a grid\'s results.json (no config, opts, variants, schedule_rule)')):
        with mock.patch.object(sys, 'argv', ['schedule_rule.py', *argv]), pytest.raises(SystemExit) as e:
            schedule_rule.main()
        assert expected in str(e.value) and '\n' not in str(e.value)
    lone = tmp_path / 'results.json'
    lone.write_text(json.dumps(grid_of(12, [], cmx=[50.0, 51.0])))
    with mock.patch.object(sys, 'argv', ['schedule_rule.py', str(lone)]), pytest.raises(SystemExit) as e:
        schedule_rule.main()
    assert 'no two of these grids' in str(e.value)


def run_grid(out, opts, *extra):
    return [sys.executable, 'tools/ablate.py', '-c', DEMO_CONFIG, '--variants', 'cmx', 'primkd', '--seeds', '1',
            '--out', out, *extra, '--opts', *opts]


def launch_env():
    # One thread per process: the cells of a tiny grid are fastest so on a shared CPU.
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT)


@pytest.fixture(scope='module')
def killed_and_rerun(dataset, tmp_path_factory):
    """A grid killed once its first cell (the RGB teacher) has finished, then run to the end."""
    out = str(tmp_path_factory.mktemp('grid'))
    opts = grid_opts(dataset)
    first = os.path.join(out, 'rgb_teacher', 'seed1')
    proc = subprocess.Popen(run_grid(out, opts), cwd=REPO_ROOT, env=launch_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not os.path.isfile(os.path.join(first, ablate.CELL_RESULT)) and proc.poll() is None:
        assert time.monotonic() < deadline, 'the first cell did not finish in 10 minutes'
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the grid and the cell it has started
    proc.wait()
    snapshot = {name: open(os.path.join(first, name), 'rb').read()
                for name in (ablate.CELL_RESULT, ablate.CELL_SPEC, 'teacher/train.log', 'teacher/last.pth')}
    # The rest side by side: the two students, whose teacher has finished, at once (--jobs 2).
    rerun = subprocess.run(run_grid(out, opts, '--jobs', '2'), cwd=REPO_ROOT, env=launch_env(), capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return out, opts, first, snapshot, rerun.stdout


@pytest.mark.integration
def test_a_killed_grid_continues_without_rerunning_finished_cells(killed_and_rerun):
    out, _, first, snapshot, stdout = killed_and_rerun
    assert 'cell 1 of 3: rgb_teacher seed 1: finished earlier, skipped' in stdout
    assert 'cell 3 of 3: primkd seed 1 done in' in stdout
    # Both students started before either had finished; their output went to their cell.log.
    lines = stdout.splitlines()
    started = [n for n, line in enumerate(lines) if line.endswith(f"{ablate.CELL_LOG})") and 'seed 1 (output in' in line]
    assert len(started) == 2 and max(started) < min(n for n, line in enumerate(lines) if ' done in ' in line)
    assert 'epoch 1/1' in open(os.path.join(out, 'primkd', 'seed1', ablate.CELL_LOG)).read()
    for name, content in snapshot.items():
        assert open(os.path.join(first, name), 'rb').read() == content, name
    # The student learnt from the teacher cell of its seed: its last checkpoint.
    teacher = os.path.join(first, 'teacher', 'last.pth')
    log = open(os.path.join(out, 'primkd', 'seed1', 'student', 'train.log')).read()
    assert f'teacher {teacher} (mit_b0, rgb);' in log
    with open(os.path.join(out, ablate.RESULTS_FILE)) as f:
        results = json.load(f)
    assert list(results['variants']) == ['rgb_teacher', 'cmx', 'primkd']
    assert all(cell['finished'] for cell in results['cells']) and results['seeds'] == [1]
    for name in results['variants']:
        with open(os.path.join(out, name, 'seed1', ablate.CELL_RESULT)) as f:
            miou = 100 * json.load(f)['miou']
        assert results['variants'][name]['miou']['seeds'] == {'1': pytest.approx(miou)}
    primkd, cmx = results['variants']['primkd'], results['variants']['cmx']
    assert primkd['difference']['mean'] == pytest.approx(primkd['miou']['mean'] - cmx['miou']['mean'])
    assert set(primkd['class_iou_difference']) == set(results['class_names'])
    assert any('--mode student --distillation_alpha 0 --distillation_beta 0' in c for cell in results['cells']
               for c in cell['commands'])
    table = open(os.path.join(out, ablate.TABLE_FILE)).read()
    assert table in stdout
    for row in ('| rgb_teacher | teacher |', '| cmx | student |', '| primkd | student |'):
        assert row in table
    assert '| cmx | student |' in table and '(reference)' in table
    # Learning curves: every cell's epochs with its test mIoU, the last one the cell's result.
    for cell in results['cells']:
        assert [r['epoch'] for r in cell['curve']] == [1] and 'miou' in cell['curve'][0]
        assert 100 * cell['curve'][-1]['miou'] == pytest.approx(results['variants'][cell['variant']]['miou']['mean'],
                                                                abs=1e-6)
    assert os.path.getsize(os.path.join(out, ablate.CURVES_FILE)) > 1000


@pytest.mark.integration
def test_status_of_a_finished_real_grid(killed_and_rerun):
    out, opts, _, _, _ = killed_and_rerun
    proc = subprocess.run(run_grid(out, opts, '--status'), cwd=REPO_ROOT, env=launch_env(), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(out, ablate.RESULTS_FILE)) as f:
        results = json.load(f)
    for cell in results['cells']:
        row = next(line for line in proc.stdout.splitlines() if line.startswith(f"| {cell['variant']} seed 1 |"))
        _, state, epochs, last, _, rate, _ = row.strip('| ').split(' | ')
        miou = results['variants'][cell['variant']]['miou']['mean']
        assert (state, epochs, last) == ('finished', '1/1', f'{miou:.1f} (last checkpoint)')
        # One timed epoch: its rate is that epoch's seconds, printed to one decimal.
        assert rate == f"{cell['curve'][0]['seconds']:.1f}" and float(rate) > 0
    assert proc.stdout.rstrip().endswith('3 of 3 cells finished')


@pytest.mark.integration
def test_jobs_without_omp_num_threads_say_how_to_share_the_cores(killed_and_rerun):
    out, opts, _, _, _ = killed_and_rerun
    env = {k: v for k, v in launch_env().items() if k != 'OMP_NUM_THREADS'}
    proc = subprocess.run(run_grid(out, opts, '--jobs', '2'), cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f'OMP_NUM_THREADS={max(1, os.cpu_count() // 2)} shares them' in proc.stderr
    assert proc.stdout.count('finished earlier, skipped') == 3


@pytest.mark.integration
def test_bootstrap_over_the_test_images_of_a_finished_grid(killed_and_rerun):
    out, opts, _, _, _ = killed_and_rerun
    proc = subprocess.run(run_grid(out, opts, '--report-only', '--bootstrap'), cwd=REPO_ROOT, env=launch_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(out, ablate.RESULTS_FILE)) as f:
        results = json.load(f)
    for name in ('primkd', 'rgb_teacher'):
        boot = results['variants'][name]['bootstrap']
        assert boot['images'] == 4 and boot['seeds'] == 1 and boot['low'] <= boot['mean'] <= boot['high']
        # The point estimate is the t interval's mean: the same last checkpoints, image by image.
        assert boot['mean'] == pytest.approx(results['variants'][name]['difference']['mean'], abs=1e-6)
    # The per-image matrices add up to val.py's confusion matrix of the same checkpoint.
    hists = numpy.load(os.path.join(out, 'primkd', 'seed1', 'image_hists.npy'))
    with open(os.path.join(out, 'primkd', 'seed1', ablate.CELL_RESULT)) as f:
        assert hists.sum(axis=0).tolist() == json.load(f)['hist']
    assert 'bootstrap' in open(os.path.join(out, ablate.TABLE_FILE)).read()


@pytest.mark.integration
def test_ablate_corrupt_on_a_real_grid(killed_and_rerun):
    out, grid_opts, _, _, _ = killed_and_rerun
    proc = subprocess.run(run_grid(out, grid_opts, '--report-only', '--corrupt', 'depth_holes:4', 'rgb_dark:1'),
                          cwd=REPO_ROOT, env=launch_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(out, 'robustness.json')) as f:
        record = json.load(f)
    for cell in record['cells']:
        # the clean figure evaluated in-process is val.py's figure of the same checkpoint
        assert cell['clean'] == pytest.approx(json.load(open(os.path.join(out, cell['variant'], 'seed1', ablate.CELL_RESULT)))['miou'])
    teacher = record['variants']['rgb_teacher']['corruptions']
    assert teacher['depth_holes'] == {'applicable': False} and teacher['rgb_dark']['applicable']
    primkd, cmx = (record['variants'][v]['corruptions']['depth_holes'] for v in ('primkd', 'cmx'))
    assert primkd['vs_reference']['mean']['mean'] == pytest.approx(primkd['mean']['mean'] - cmx['mean']['mean'])
    assert os.path.getsize(os.path.join(out, 'robustness.png')) > 1000
    assert '## Paired differences to `cmx`' in open(os.path.join(out, 'robustness.md')).read()
    # a second run evaluates nothing again
    again = subprocess.run(run_grid(out, grid_opts, '--report-only', '--corrupt', 'depth_holes:4'), cwd=REPO_ROOT,
                           env=launch_env(), capture_output=True, text=True)
    assert again.returncode == 0 and 'seed 1: depth_holes:4' not in again.stdout


@pytest.mark.integration
def test_a_changed_cell_is_refused_in_one_line(killed_and_rerun):
    out, opts, first, snapshot, _ = killed_and_rerun
    changed = subprocess.run(run_grid(out, [*opts, 'nepochs=2']), cwd=REPO_ROOT, env=launch_env(),
                             capture_output=True, text=True)
    assert changed.returncode == 2
    assert changed.stderr.strip().count('\n') == 0 and 'Traceback' not in changed.stderr
    assert 'cell rgb_teacher seed 1' in changed.stderr and 'settings.nepochs 1 -> 2' in changed.stderr
    assert '--rerun-changed' in changed.stderr
    for name, content in snapshot.items():
        assert open(os.path.join(first, name), 'rb').read() == content, name


@pytest.mark.parametrize('args, needle', [
    (['--variants', 'nope'], "unknown variant 'nope'"),
    (['--seeds', '1', '1'], '--seeds: 1 given more than once'),
    (['--teacher', 'missing.pth'], "--teacher: 'missing.pth' does not exist"),
    (['--variants', 'rgb_teacher', '--teacher', DEMO_CONFIG], '--teacher replaces the rgb_teacher cells'),
    (['--opts', 'seed=4'], '--opts seed=...: the grid sets it'),
    (['--opts', 'lr=-1'], "config key 'lr'"),
    (['--jobs', '0'], '--jobs: expected an integer >= 1, got 0'),
    (['--report-only'], "does not exist; --report-only reports the cells a grid has run there"),
])
def test_bad_input_is_one_line(dataset, tmp_path, capsys, args, needle):
    parser = ablate_tool.get_args_parser()
    argv = ['-c', DEMO_CONFIG, '--out', str(tmp_path / 'grid'), '--opts', *grid_opts(dataset)]
    with pytest.raises(SystemExit) as exit_info:
        ablate_tool.main(parser.parse_args(argv + args), parser)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count('\n') == 1
    assert not os.path.exists(tmp_path / 'grid')


def test_a_missing_dataset_is_one_line(tmp_path, capsys):
    """A real dataset (no synthetic preset to generate it from) must exist before the first cell."""
    parser = ablate_tool.get_args_parser()
    argv = ['-c', DEMO_CONFIG, '--out', str(tmp_path / 'grid'), '--opts', 'synthetic_preset=None',
            f"dataset_path={str(tmp_path / 'absent')!r}"]
    with pytest.raises(SystemExit):
        ablate_tool.main(parser.parse_args(argv), parser)
    err = capsys.readouterr().err
    assert 'does not exist (config key dataset_path)' in err and 'docs/data.md' in err
    assert not os.path.exists(tmp_path / 'grid')


def test_a_variants_file_adds_variants(tmp_path):
    path = tmp_path / 'variants.json'
    path.write_text(json.dumps({'half_kl': {'flags': ['--distillation_alpha', '0.5'], 'teacher': 'rgb_teacher'}}))
    assert ablate.load_variants_file(str(path)) == {
        'half_kl': ablate.Variant('student', ('--distillation_alpha', '0.5'), (), 'rgb_teacher')}
    path.write_text(json.dumps({'cmx': {}}))
    with pytest.raises(ablate.GridError, match="variant 'cmx': the name is built in"):
        ablate.load_variants_file(str(path))


def test_files_that_are_no_cell_are_never_reused(dataset, tmp_path, capsys):
    stray = tmp_path / 'grid' / 'cmx' / 'seed1'
    stray.mkdir(parents=True)
    (stray / 'notes.txt').write_text('not a cell')
    parser = ablate_tool.get_args_parser()
    argv = ['-c', DEMO_CONFIG, '--variants', 'cmx', '--seeds', '1', '--out', str(tmp_path / 'grid'),
            '--opts', *grid_opts(dataset)]
    with pytest.raises(SystemExit) as exit_info:
        ablate_tool.main(parser.parse_args(argv), parser)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"cell cmx seed 1: '{stray}' holds files but no cell.json" in err and err.count('\n') == 1
    assert os.listdir(tmp_path / 'grid') == ['cmx'] and os.listdir(stray) == ['notes.txt']


def script_cell(tmp_path, variant, teacher=None, fail=False):
    """A cell whose commands are small Python processes: training writes done.txt (after checking that
    its teacher's exists, and staying alive until a go.txt beside the cells appears), evaluation writes
    result.json, or training fails."""
    folder = tmp_path / variant / 'seed1'
    check = f'assert os.path.isfile({str(tmp_path / teacher / "seed1" / "done.txt")!r}); ' if teacher else ''
    train = ('import os, sys, time; ' + check +
             f'[time.sleep(0.01) for _ in iter(lambda: os.path.isfile({str(tmp_path / "go.txt")!r}), True)]; '
             + ('sys.exit(3)' if fail else f'open({str(folder / "done.txt")!r}, "w").close()'))
    evaluate = f'open({str(folder / ablate.CELL_RESULT)!r}, "w").write("{{}}")'
    spec = {'variant': variant, 'teacher': {'cell': f'{teacher} seed 1'} if teacher else None}
    return ablate.Cell(variant, 1, str(folder), 'student', [sys.executable, '-c', train],
                       [sys.executable, '-c', evaluate], spec)


def test_jobs_run_cells_side_by_side_and_students_after_their_teachers(tmp_path, capsys):
    # a and b have no teacher; c learns from a. go.txt lets training end; it is written once a and b
    # have both started, or after two minutes if they never run at once (and then the test fails).
    cells = [script_cell(tmp_path, 'a'), script_cell(tmp_path, 'b'), script_cell(tmp_path, 'c', teacher='a')]
    together = []

    def release():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not together:
            if all(os.path.isfile(tmp_path / name / 'seed1' / ablate.CELL_SPEC) for name in 'ab'):
                together.append(True)
            time.sleep(0.01)
        (tmp_path / 'go.txt').write_text('')
    threading.Thread(target=release, daemon=True).start()
    reports = []
    ablate.run_grid(cells, jobs=2, on_cell_done=lambda: reports.append(1))
    assert together, 'a and b did not run at the same time'
    lines = capsys.readouterr().out.splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith('cell ') and '(output in' in line]
    dones = {line.split(': ')[1].split(' done')[0]: n for n, line in enumerate(lines) if ' done in ' in line}
    assert len(starts) == 3 and len(dones) == 3 and len(reports) == 3
    # c started only after a had finished (its training asserts so too), and it ran: result.json.
    assert starts[2] > dones['a seed 1'] and 'cell 3 of 3: c seed 1' in lines[starts[2]]
    for cell in cells:
        assert os.path.isfile(cell.result_path)
        log = open(os.path.join(cell.folder, ablate.CELL_LOG)).read()
        assert log.count('>> ') == 2 and shlex.join(cell.train_command) in log


def test_after_a_failed_cell_its_students_never_start(tmp_path, capsys):
    (tmp_path / 'go.txt').write_text('')
    cells = [script_cell(tmp_path, 'a', fail=True), script_cell(tmp_path, 'b'),
             script_cell(tmp_path, 'c', teacher='a')]
    with pytest.raises(ablate.CellFailed) as failed:
        ablate.run_grid(cells, jobs=2)
    assert failed.value.status == 3 and 'cell 1 of 3: a seed 1 failed' in str(failed.value)
    assert os.path.join(cells[0].folder, ablate.CELL_LOG) in str(failed.value)
    # b ran beside a to its end; c, a's student, never started.
    assert os.path.isfile(cells[1].result_path)
    assert not os.path.exists(cells[2].folder) and 'c seed 1' not in capsys.readouterr().out


def test_a_cell_folder_that_cannot_be_made_fails_the_cell_not_the_grid(tmp_path):
    (tmp_path / 'go.txt').write_text('')
    (tmp_path / 'a').write_text('a file where the cell folder a/seed1 should go')
    cells = [script_cell(tmp_path, 'a'), script_cell(tmp_path, 'b')]
    with pytest.raises(ablate.CellFailed) as failed:
        ablate.run_grid(cells, jobs=2)
    assert failed.value.status == 1 and 'cell 1 of 2: a seed 1 failed:' in str(failed.value)
    assert str(tmp_path / 'a') in str(failed.value) and os.path.isfile(cells[1].result_path)
