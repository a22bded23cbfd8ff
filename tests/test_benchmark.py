"""tools/benchmark.py and utils/op_counts.py: the attention FLOP formulas against hand counts and torch's
own formulas, and the benchmark's report (structure, consistency of its figures, the FLOPs of a step
against counts made here). No assertion is about speed."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from config import REPO_ROOT, load_config
from dataloader.synthetic_rooms import make_synthetic_dataset
from engine.run_spec import RunSpec
from models.builder import build_model
from tools import benchmark
from utils.op_counts import (EXTRA_FORMULAS, attention_backward_flops, attention_flops, count_flops,
                         count_macs)
from helpers import DEMO_CONFIG


def test_fused_cpu_attention_is_counted_by_hand():
    # The CPU flash kernel needs one head size for queries, keys and values: 16.
    generator = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(2, 3, n, 16, generator=generator, requires_grad=True) for n in (40, 24, 24)]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), \
            FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    per_op = {str(op): flops for op, flops in counter.get_flop_counts()['Global'].items()}
    # By hand: Q K^T and (attention) V are each 2*3*40*24*16 = 92160 multiply-adds; 2 FLOPs each.
    forward = 368640
    assert per_op['aten._scaled_dot_product_flash_attention_for_cpu'] == forward
    # Backward, five products of that size: scores recomputed (Q K^T), dP = dO V^T, dV = P^T dO,
    # dQ = dS K, dK = dS^T Q.
    assert per_op['aten._scaled_dot_product_flash_attention_for_cpu_backward'] == 921600
    # count_flops (no autograd) sees the forward alone.
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v))['Global'] == forward


def test_attention_formulas_agree_with_torchs_for_the_cuda_kernels():
    query, key, value = (2, 3, 40, 16), (2, 3, 24, 16), (2, 3, 24, 8)
    assert attention_flops(query, key, value) == flop_counter.sdpa_flop_count(query, key, value)
    grad_out = (2, 3, 40, 8)
    assert (attention_backward_flops(grad_out, query, key, value)
            == flop_counter.sdpa_backward_flop_count(grad_out, query, key, value))
    # Every fused CUDA attention kernel of this torch is counted, by torch or by utils.op_counts.
    for name in ('_scaled_dot_product_flash_attention', '_scaled_dot_product_efficient_attention',
                 '_scaled_dot_product_cudnn_attention'):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            assert op in flop_counter.flop_registry or op in EXTRA_FORMULAS, name


@pytest.mark.parametrize('text, expected', [
    ('fp32', ('fp32', False, False)),
    ('bf16+channels_last+compile', ('bf16', True, True)),
    ('fp16+compile', ('fp16', False, True)),
])
def test_variant_names(text, expected):
    assert tuple(benchmark.parse_variant(text))[1:] == expected


@pytest.mark.parametrize('text', ['tf32', 'bf16+compile+compile', 'bf16+fast', 'compile+bf16',
                                  'bf16+cudnn_benchmark'])
def test_bad_variant_names_are_refused(text):
    with pytest.raises(ValueError, match='--variants'):
        benchmark.parse_variant(text)


def failing_compile(model, *args, **kwargs):
    raise RuntimeError('no C++ compiler found')


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'cpu.json'
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, 'compile', failing_compile)
        benchmark.main(['-c', DEMO_CONFIG, '--size', '64', '64', '--batch', '2', '--steps', '2',
                        '--warmup', '1', '--variants', 'fp32', 'bf16+compile', 'bf16', 'fp16',
                        '--eval', '--peak-tflops', '0.5', '--device', 'cpu', '--json', str(out)])
    with open(out) as f:
        return json.load(f)


def test_report_structure(report):
    assert report['device']['type'] == 'cpu' and report['device']['name']
    assert report['versions']['torch'] == torch.__version__ and report['versions']['timm']
    assert report['batch'] == 2 and report['size'] == [64, 64] and report['mode'] == 'student'
    assert [v['variant'] for v in report['variants']] == ['fp32', 'bf16+compile', 'bf16', 'fp16']
    # A failed compilation and a precision the device lacks are errors in their rows only.
    assert report['variants'][1] == {'variant': 'bf16+compile',
                                     'error': 'RuntimeError: no C++ compiler found'}
    assert 'GPU' in report['variants'][3]['error']
    assert report['peak_tflops']['fp32'] == {'tflops': 0.5, 'source': '--peak-tflops'}


def test_report_figures_are_consistent(report):
    flops = report['flops']
    for variant in (report['variants'][0], report['variants'][2]):
        for part, images in (('train', 2), ('eval', 1)):
            row = variant[part]
            assert len(row['step_ms']) == 2 and all(ms > 0 for ms in row['step_ms'])
            assert row['ms_min'] <= row['ms_median'] <= row['ms_max']
            assert row['images_per_s'] == pytest.approx(images / (row['ms_median'] / 1000))
            step_flops = flops['train_step' if part == 'train' else 'eval_image']
            assert row['tflops'] == pytest.approx(step_flops / (row['ms_median'] / 1000) / 1e12)
            assert row['mfu'] == pytest.approx(row['tflops'] / 0.5)
        assert variant['train']['peak_memory_mb'] is None or variant['train']['peak_memory_mb'] >= 0
    fp32, bf16 = report['variants'][0]['train'], report['variants'][2]['train']
    assert fp32['speedup_vs_fp32'] == 1.0
    assert bf16['speedup_vs_fp32'] == pytest.approx(bf16['images_per_s'] / fp32['images_per_s'])


def test_report_flops_follow_the_convention(report):
    """One step = 3 x student forward + 1 x teacher forward, counted here on fresh models."""
    cfg = load_config(DEMO_CONFIG)
    rgb = torch.randn(2, 3, 64, 64)
    student = build_model(cfg, 'student', distill=True).eval()
    teacher = build_model(cfg, 'teacher').eval()
    student_macs = count_macs(student, rgb, rgb)['total']
    teacher_macs = count_macs(teacher, rgb)['total']
    flops = report['flops']
    assert flops['model_forward'] == 2 * student_macs
    assert flops['teacher_forward'] == 2 * teacher_macs
    assert flops['train_step'] == 2 * (3 * student_macs + teacher_macs)
    # The demo evaluates whole images: one image is half the batch of two.
    assert flops['eval_image'] == student_macs
    assert '3 x student forward + 1 x teacher forward' in flops['convention']


def test_loader_benchmark_and_absent_dataset(tmp_path, capsys):
    root = str(tmp_path / 'Synthetic')
    make_synthetic_dataset(root, num_train=8, num_test=2, height=64, width=64, seed=1)
    cfg = load_config(DEMO_CONFIG, [f'dataset_path={root!r}', 'num_workers=1', 'num_train_imgs=8'])
    result = benchmark.benchmark_loader(cfg, RunSpec.from_config(cfg, 'student'), batch=2, size=(64, 64),
                                        steps=2, warmup=1, device=torch.device('cpu'))
    assert result['per_image_ms'] > 0
    assert result['images_per_s_per_worker'] == pytest.approx(1000 / result['per_image_ms'])
    assert set(result['workers']) == {'0', '1'} and all(r > 0 for r in result['workers'].values())

    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(['-c', DEMO_CONFIG, '--loader', '--device', 'cpu',
                        '--opts', f"dataset_path={str(tmp_path / 'absent')!r}"])
    assert exit_info.value.code == 2
    assert 'absent' in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['--size', '16', '64'], '--size'),
    (['--steps', '0'], '--steps'),
    (['--variants', 'fp64'], '--variants'),
    (['--variants', 'bf16', 'bf16'], 'twice'),
    (['--peak-tflops', '-1'], '--peak-tflops'),
    (['--json', os.path.join(REPO_ROOT, 'README.md', 'cpu.json')], '--json'),  # a folder in a file
    (['--json', os.path.join(REPO_ROOT, 'benchmarks')], '--json'),  # an existing folder
])
def test_bad_arguments_stop_before_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(['-c', DEMO_CONFIG, '--device', 'cpu', *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('gpu_name, precision, expected', [
    ('NVIDIA H100 80GB HBM3', 'bf16', 989.4),       # SXM
    ('NVIDIA H100 PCIe', 'bf16', 756.5),
    ('NVIDIA H100 PCIe', 'fp32', 378.0),            # fp32 against the TF32 peak
    ('NVIDIA H200', 'fp16', 989.4),
    ('NVIDIA H200 NVL', 'fp32', 417.5),
    ('NVIDIA A100-SXM4-80GB', 'bf16', 312.0),
    ('Tesla V100-SXM2-32GB', 'bf16', None),
    (None, 'fp32', None),                           # CPU
])
def test_known_gpu_peaks(gpu_name, precision, expected):
    assert benchmark.known_peak(gpu_name, precision, None)[0] == expected
    assert benchmark.known_peak(gpu_name, precision, 123.0) == (123.0, '--peak-tflops')
