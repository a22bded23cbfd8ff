"""Inference latency per image: torch eager fp32, torch bf16 (autocast) and onnxruntime on the CPU,
side by side for several backbones in one run.

    python tools/benchmark_infer.py -c config/nyu_b2.py --backbones mit_b0 mit_b2 --size 480 640 \\
        --json benchmarks/cpu_infer.json

What is timed: one image of --size through engine.evaluator.predict_probabilities, the path of
val.py and tools/infer.py (the config's eval_mode and eval_crop_size, scale 1, no flip: one window
at 480x640 with the NYU configs), on random weights and random normalised inputs. HHA is not
included (tools/benchmark_hha.py times it). Per variant: the median, min and max of --repeats runs
after --warmup untimed ones (utils.benchmarking.timed_runs: the device synchronised around each
run), and the fraction of pixels whose predicted class (of one more run) equals torch fp32's. The
onnxruntime file is exported once per backbone (tools/export.py's exporter, the input size fixed to
--size) and runs on the CPU with as many threads as torch uses; torch runs on --device. A variant
the device cannot run is an error in its row.
"""
import argparse
import os
import tempfile
import time

import torch

from config import add_config_args, config_from_args
from engine.amp import autocast, unsupported_amp
from engine.devices import DeviceError, gpu_count
from engine.evaluator import predict_probabilities
from engine.inference import ONNX_PACKAGES, InferenceError, OnnxNetwork, export_onnx, require_onnx_packages
from engine.run_spec import RunSpec
from models.encoders.mit import MIT_SIZES
from utils.benchmarking import device_info, library_versions, provenance, save_report, summary_ms, timed_runs
from utils.constants import LAST_STAGE_STRIDE, MODES, STUDENT
from utils.io import check_output_file

VARIANTS = ('torch fp32', 'torch bf16', 'onnxruntime')
REFERENCE = 'torch fp32'


def get_args_parser():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split('\n')[0]),
                             default='config/nyu_b2.py')
    parser.add_argument('--backbones', nargs='+', default=['mit_b0', 'mit_b2'], choices=sorted(MIT_SIZES),
                        metavar='NAME', help='encoder sizes to time (default: mit_b0 mit_b2)')
    parser.add_argument('--mode', choices=MODES, default=STUDENT,
                        help='student: RGB + HHA (default); teacher: RGB alone')
    parser.add_argument('--size', nargs=2, type=int, default=[480, 640], metavar=('H', 'W'),
                        help='image height and width (default: 480 640)')
    parser.add_argument('--repeats', type=int, default=20, help='timed runs per variant (default: 20)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs first (default: 3)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto',
                        help="torch's device (auto: CUDA when available); onnxruntime runs on the CPU")
    parser.add_argument('--json', metavar='OUT', help='write every figure to this JSON file')
    parser.add_argument('--overwrite', action='store_true', help='replace --json if it exists')
    return parser


def check_args(args, parser):
    """The torch device; every bad flag before any work."""
    try:  # the GPU check of train.py and tools/benchmark.py
        device = torch.device('cuda' if gpu_count(args.device) else 'cpu')
        require_onnx_packages()
    except (DeviceError, InferenceError) as e:
        parser.error(str(e))
    if min(args.size) < LAST_STAGE_STRIDE:
        parser.error(f'--size must be at least {LAST_STAGE_STRIDE} a side, got {args.size[0]} {args.size[1]}')
    if args.repeats < 1 or args.warmup < 1:
        parser.error(f'--repeats and --warmup must be at least 1, got {args.repeats} and {args.warmup}')
    if args.json:
        if os.path.exists(args.json) and not args.overwrite:
            parser.error(f'--json {args.json}: exists; pass --overwrite to replace it')
        try:
            check_output_file(args.json)
        except OSError as e:
            parser.error(f'--json {args.json}: {e}')
    return device


def figures(seconds, prediction, reference):
    summary = summary_ms(seconds)
    return {**summary, 'images_per_s': 1e3 / summary['ms_median'], 'ms': [round(s * 1e3, 3) for s in seconds],
            'agreement_vs_fp32': (prediction == reference).float().mean().item()}


def benchmark_backbone(cfg, args, backbone, device):
    """[row per variant] for one encoder size."""
    cfg = type(cfg)(dict(cfg), backbone=backbone)
    torch.manual_seed(cfg.seed)
    model = RunSpec.for_evaluation(args.mode).build_model(cfg).eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    rgb = torch.randn(1, 3, *args.size, generator=generator)
    extra = torch.randn(1, 3, *args.size, generator=generator) if args.mode == 'student' else None
    prediction = dict(eval_mode=cfg.eval_mode, scales=[1.0], flip=False, crop_size=cfg.eval_crop_size,
                      stride_rate=cfg.eval_stride_rate, max_batch=cfg.eval_max_batch)

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'model.onnx')
        start = time.perf_counter()
        export_onnx(model, args.mode, cfg, path, tuple(args.size), dynamic=False)
        export_seconds = time.perf_counter() - start
        networks = {'torch fp32': (model.to(device), device, None), 'torch bf16': (model, device, torch.bfloat16),
                    'onnxruntime': (OnnxNetwork(path), torch.device('cpu'), None)}
        rows, reference = [], None
        for variant in VARIANTS:
            network, where, dtype = networks[variant]
            row = {'backbone': backbone, 'variant': variant, 'device': where.type}
            reason = unsupported_amp('bf16', where) if dtype is torch.bfloat16 else None
            if reason is not None:
                rows.append({**row, 'error': reason})
                continue
            inputs = (rgb.to(where), None if extra is None else extra.to(where))

            def run():
                with torch.inference_mode(), autocast(where, dtype):
                    return predict_probabilities(network, *inputs, **prediction).argmax(dim=1).cpu()

            print(f'{backbone} {variant} ...', flush=True)
            seconds = timed_runs(run, args.repeats, args.warmup, where)
            predicted = run()
            reference = predicted if variant == REFERENCE else reference
            rows.append({**row, **figures(seconds, predicted, reference)})
    for row in rows:
        row['onnx_export_seconds'] = export_seconds
    return rows


def print_table(rows):
    header = (f"{'backbone':<10}{'variant':<14}{'device':<8}{'ms/img':>9}{'min-max':>17}{'img/s':>8}"
              f"{'speed-up':>10}{'same class':>12}")
    print('\n' + header + '\n' + '-' * len(header))
    for row in rows:
        if 'error' in row:
            print(f"{row['backbone']:<10}{row['variant']:<14}{row['device']:<8}error: {row['error']}")
            continue
        base = next(r for r in rows if r['backbone'] == row['backbone'] and r['variant'] == REFERENCE)
        print(f"{row['backbone']:<10}{row['variant']:<14}{row['device']:<8}{row['ms_median']:>9.1f}"
              f"{row['ms_min']:>9.1f}-{row['ms_max']:<7.1f}{row['images_per_s']:>8.2f}"
              f"{base['ms_median'] / row['ms_median']:>9.2f}x{100 * row['agreement_vs_fp32']:>11.2f}%")


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)
    device = check_args(args, parser)
    started = time.perf_counter()
    print(f"{args.mode} {', '.join(args.backbones)} at {args.size[0]}x{args.size[1]} ({cfg.eval_mode}, crop "
          f"{cfg.eval_crop_size}); torch on {device_info(device)['name']}, onnxruntime on the CPU; "
          f"{args.warmup} warm-up + {args.repeats} timed runs, {torch.get_num_threads()} CPU threads")
    rows = [row for backbone in args.backbones for row in benchmark_backbone(cfg, args, backbone, device)]
    print_table(rows)
    report = {
        **provenance('tools/benchmark_infer.py', argv),
        'device': device_info(device), 'onnxruntime_device': device_info(torch.device('cpu')),
        'versions': library_versions(device, *ONNX_PACKAGES),
        'config': args.config, 'mode': args.mode, 'size': list(args.size), 'eval_mode': cfg.eval_mode,
        'crop_size': cfg.eval_crop_size, 'decoder_embed_dim': cfg.decoder_embed_dim,
        'warmup': args.warmup, 'repeats': args.repeats, 'results': rows,
        'seconds': time.perf_counter() - started,
    }
    save_report(args.json, report)
    return report


if __name__ == '__main__':
    main()
