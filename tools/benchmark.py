"""Training and evaluation speed of a config, for several precision / layout / compile variants.

Per variant: images/s, ms per step (median, min, max), peak memory, achieved TFLOP/s, MFU, and the
speed-up over `fp32`; a table on the console and, with --json, every figure in a file.

    python tools/benchmark.py -c config/nyu_b4.py --batch 4 --json benchmarks/h100.json
    python tools/benchmark.py -c config/demo.py --variants fp32 bf16 --eval --loader

What is timed. A training step is engine.trainer.train_one_epoch's own step, run on one random
batch of --batch images of --size (default: the config's batch_size and image size): the frozen
teacher's forward under inference_mode and autocast, the student's forward, compute_losses, the
backward pass, the optimizer step (fused AdamW, as train.py), the scheduler and the
loss bookkeeping. Models are built as train.py builds them (random weights; the student has its
distillation heads when the config's feature term is on; --mode teacher times an RGB-only teacher
trained with cross-entropy). The device is synchronised before each step starts; the figures are
the median (and min / max) of --steps steps after --warmup untimed ones. --eval also times the
evaluator's forward pass (engine.evaluator.predict_probabilities on one image of --size, the
config's eval_mode, scale 1, no flip) under the variant's precision.

Variants are a precision, optionally with `+channels_last` (config key channels_last) and
`+compile` (train.py --compile): `fp32`
(eager float32, the official numerical path), `bf16` (autocast bfloat16, train.py's default on
GPUs), `fp16` (autocast float16 with a gradient scaler, CUDA only). A variant the device cannot
run, or one whose compilation fails, is reported as an error in its row; the others still run.
Every variant follows the config key cudnn_benchmark (cuDNN autotuning, on by default as in
train.py). Its effect takes two runs (`--opts cudnn_benchmark=False`), not two variants: torch
caches cuDNN's chosen algorithms per input shape and layout, not per setting, so a second variant
in the same process would reuse the first one's choices.

FLOPs. One step counts 3 x the student's forward FLOPs (forward + backward) + 1 x the teacher's
forward FLOPs, counted once by utils.op_counts on the variant-independent float32 models; FLOPs are
2 x multiply-adds of convolutions and matrix products (attention included). MFU = achieved TFLOP/s /
the device's dense peak for the variant's precision: bf16/fp16 tensor-core peak, and for fp32 the
TF32 tensor-core peak. That is the fastest float32 work can go (cuDNN runs float32 convolutions in
TF32 by default); the matrix products, most of MiT's work, stay in full float32 as torch's default
and the official code have it, so fp32 MFU reads low. Known GPUs are in GPU_PEAK_TFLOPS;
--peak-tflops overrides (needed on CPUs, where MFU is otherwise n/a).

Memory. CUDA: torch.cuda.max_memory_allocated during the timed steps of the variant (models,
gradients, optimizer state, activations; the peak is reset after warm-up, so cuDNN's autotuning
workspaces and compilation do not count); for evaluation, what the forward pass adds to the trained
model's memory. CPU (Linux): the rise of the process's peak resident set size over the same span
(the kernel's high-water mark, reset after warm-up); elsewhere n/a.

--loader times the input pipeline on its own: RGBXDataset reading and TrainTransform, per image in
the main process, and through train.py's loader with 0 and the config's num_workers workers, so a
slow loader cannot hide behind the model's figures.
"""
import argparse
import sys
import tempfile
import time
from typing import NamedTuple, Optional

import torch

from config import ConfigError, add_config_args, config_from_args
from dataloader.dataset import DatasetError
from dataloader.loader import build_train_loader
from dataloader.transforms import TrainTransform
from engine.amp import AMP_DTYPES, autocast, unsupported_amp
from engine.devices import DeviceError, gpu_count
from engine.distributed import DistInfo
from engine.evaluator import predict_probabilities
from engine.logger import RunLogger
from engine.optim import build_optimizer, build_scheduler
from engine.rng import seed_everything
from engine.run_spec import RunSpec
from engine.trainer import train_one_epoch
from utils.benchmarking import (PeakMemory, device_info, library_versions, provenance, save_report, summary_ms,
                                synchronize, timed_runs)
from utils.constants import AMP_FULL_PRECISION, LAST_STAGE_STRIDE, MODES, STUDENT
from utils.io import check_output_file
from utils.modules import unwrap_model
from utils.op_counts import TRAINING_FLOPS_CONVENTION, count_flops, training_step_flops

# A variant's precision -> train.py's --amp setting; the table says fp32 where the flag says none.
PRECISION_AMP = {'fp32': AMP_FULL_PRECISION, 'bf16': 'bf16', 'fp16': 'fp16'}
OPTIONS = ('channels_last', 'compile')
DEFAULT_VARIANTS = {
    'cuda': ['fp32', 'bf16', 'bf16+channels_last', 'bf16+compile'],
    'cpu': ['fp32', 'bf16', 'bf16+channels_last'],
}

# Dense (no 2:4 sparsity) tensor-core peaks in TFLOP/s from NVIDIA's data sheets; bf16 = fp16.
# Matched in this order against torch.cuda.get_device_name() (e.g. 'NVIDIA H100 80GB HBM3' is the
# SXM part, 'NVIDIA H100 PCIe', 'NVIDIA A100-SXM4-80GB').
GPU_PEAK_TFLOPS = (
    ('H200 NVL', {'bf16': 835.5, 'tf32': 417.5}),
    ('H200', {'bf16': 989.4, 'tf32': 494.7}),
    ('H100 NVL', {'bf16': 835.5, 'tf32': 417.5}),
    ('H100 PCIe', {'bf16': 756.5, 'tf32': 378.0}),
    ('H100', {'bf16': 989.4, 'tf32': 494.7}),
    ('A100', {'bf16': 312.0, 'tf32': 156.0}),
)
PEAK_KIND = {'fp32': 'tf32', 'bf16': 'bf16', 'fp16': 'bf16'}


class SpeedVariant(NamedTuple):
    name: str
    precision: str
    channels_last: bool
    compile: bool

    @property
    def amp_dtype(self):
        return AMP_DTYPES[PRECISION_AMP[self.precision]]


def parse_variant(text: str) -> SpeedVariant:
    precision, *options = text.split('+')
    if precision not in PRECISION_AMP:
        raise ValueError(f"--variants: {text!r} must start with one of {', '.join(PRECISION_AMP)}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown or len(set(options)) != len(options):
        raise ValueError(f"--variants: {text!r}: after the precision come '+' and any of "
                         f"{', '.join(OPTIONS)}, each at most once")
    return SpeedVariant(text, precision, *(option in options for option in OPTIONS))


def get_args_parser():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split('\n')[0]))
    parser.add_argument('--mode', choices=MODES, default=STUDENT,
                        help='student: PrimKD step with the frozen teacher (default); teacher: RGB-only')
    parser.add_argument('--batch', type=int, help="images per step (default: the config's batch_size)")
    parser.add_argument('--size', nargs=2, type=int, metavar=('H', 'W'),
                        help="input height and width (default: the config's image size)")
    parser.add_argument('--variants', nargs='+', metavar='VARIANT',
                        help='PRECISION[+channels_last][+compile], PRECISION '
                             'fp32 | bf16 | fp16 (default: '
                             f"{' '.join(DEFAULT_VARIANTS['cuda'])} on CUDA, "
                             f"{' '.join(DEFAULT_VARIANTS['cpu'])} on CPU)")
    parser.add_argument('--steps', type=int, default=10, help='timed steps per variant (default: 10)')
    parser.add_argument('--warmup', type=int, default=3,
                        help='untimed steps first (compilation happens here; default: 3)')
    parser.add_argument('--eval', action='store_true', help='also time the evaluation forward pass')
    parser.add_argument('--loader', action='store_true',
                        help="also time the data pipeline on the config's training split")
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--peak-tflops', type=float, metavar='X',
                        help="the device's peak TFLOP/s for MFU (default: the table for known GPUs)")
    parser.add_argument('--json', metavar='OUT', help='write every figure to this JSON file')
    return parser


def check_args(args, parser, cfg):
    """Every user error, before any work."""
    try:  # the same GPU check as train.py: a GPU torch cannot use is an error, not a CPU run
        device = torch.device('cuda' if gpu_count(args.device) else 'cpu')
    except DeviceError as e:
        parser.error(str(e))
    batch = cfg.batch_size if args.batch is None else args.batch
    height, width = args.size or (cfg.image_height, cfg.image_width)
    if batch < 1:
        parser.error(f'--batch must be at least 1, got {batch}')
    if min(height, width) < LAST_STAGE_STRIDE:
        parser.error(f"--size must be at least {LAST_STAGE_STRIDE} x {LAST_STAGE_STRIDE} (the encoder's stride), "
                     f"got {height} {width}")
    if args.steps < 1 or args.warmup < 1:
        parser.error(f'--steps and --warmup must be at least 1, got {args.steps} and {args.warmup}')
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error(f'--peak-tflops must be positive, got {args.peak_tflops}')
    if args.json:  # checked now, not after minutes of timing
        try:
            check_output_file(args.json)
        except OSError as e:
            parser.error(f'--json {args.json}: {e}')
    try:
        variants = [parse_variant(v) for v in args.variants or DEFAULT_VARIANTS[device.type]]
    except ValueError as e:
        parser.error(str(e))
    if len({v.name for v in variants}) != len(variants):
        parser.error('--variants: a variant is named twice')
    return device, batch, (height, width), variants


def unsupported(variant: SpeedVariant, device: torch.device) -> Optional[str]:
    """Why `device` cannot run `variant`, or None (train.py's own check of its amp setting)."""
    return unsupported_amp(PRECISION_AMP[variant.precision], device)


class TimedBatches:
    """Stands in for the training loader: yields one batch `steps` times and records the time each
    step starts, after synchronising the device (so the previous step's kernels are finished)."""

    accumulation = 1   # one batch per optimizer step

    def __init__(self, batch: dict, steps: int, device: torch.device):
        self.batch, self.steps, self.device = batch, steps, device
        self.stamps = []

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            synchronize(self.device)
            self.stamps.append(time.perf_counter())
            yield self.batch

    def step_seconds(self):
        """Duration of every step; call after the epoch has returned."""
        synchronize(self.device)
        stamps = self.stamps + [time.perf_counter()]
        return [b - a for a, b in zip(stamps, stamps[1:])]


def random_batch(spec, batch, size, num_classes, device, seed=0):
    """What the training loader yields for the run: normalised-looking inputs and labels, pinned on
    CUDA."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {'rgb': torch.randn(batch, 3, *size, generator=generator),
               'extra': torch.randn(batch, 3, *size, generator=generator),
               'label': torch.randint(0, num_classes, (batch, *size), generator=generator)}
    if not spec.extra:
        del tensors['extra']
    if device.type == 'cuda':
        tensors = {k: v.pin_memory() for k, v in tensors.items()}
    return {**tensors, 'name': [f'random_{i}' for i in range(batch)]}


def build_models(cfg, spec, device):
    """(model under training, frozen teacher or None), as train.py builds them (random weights)."""
    seed_everything(cfg.seed)
    return spec.build_model(cfg).to(device), spec.build_teacher(cfg, device, load=False)


def first_images(batch, count, device):
    """(rgb, extra or None) of the first `count` images of a batch, on `device`."""
    return tuple(batch[k][:count].to(device, non_blocking=True) if k in batch else None for k in ('rgb', 'extra'))


def count_step_flops(cfg, spec, device, batch):
    """FLOPs of one training step (TRAINING_FLOPS_CONVENTION) and of one evaluation image."""
    model, teacher = build_models(cfg, spec, device)
    model.eval()
    rgb, extra = first_images(batch, len(batch['name']), device)
    model_flops = count_flops(lambda: model(rgb, extra))['Global']
    teacher_flops = count_flops(lambda: teacher(rgb, extra))['Global'] if teacher is not None else 0
    eval_flops = count_flops(lambda: predict_eval(model, cfg, *first_images(batch, 1, device)))['Global']
    return {'convention': TRAINING_FLOPS_CONVENTION, 'model_forward': model_flops,
            'teacher_forward': teacher_flops,
            'train_step': training_step_flops(model_flops, teacher_flops), 'eval_image': eval_flops}


def predict_eval(network, cfg, rgb, extra):
    return predict_probabilities(network, rgb, extra, eval_mode=cfg.eval_mode, scales=[1.0], flip=False,
                                 crop_size=cfg.eval_crop_size, stride_rate=cfg.eval_stride_rate,
                                 max_batch=cfg.eval_max_batch)


def timing_figures(seconds, images, flops, peak_tflops):
    figures = summary_ms(seconds)
    median = figures['ms_median'] / 1e3
    tflops = flops / median / 1e12
    return {'images_per_s': images / median, **figures, 'tflops': tflops,
            'mfu': tflops / peak_tflops if peak_tflops else None,
            'step_ms': [round(s * 1e3, 3) for s in seconds]}


def run_variant(cfg, spec, args, variant, device, batch, flops, peak_tflops):
    """Training (and with --eval, evaluation) figures of one variant."""
    cfg = type(cfg)(dict(cfg), channels_last=variant.channels_last, compile=variant.compile)
    amp_dtype = variant.amp_dtype
    result = {'variant': variant.name}
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    with PeakMemory(device) as memory:
        model, teacher = build_models(cfg, spec, device)
        if variant.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
        train_model = torch.compile(model) if variant.compile else model
        with tempfile.TemporaryDirectory() as run_dir:
            logger = RunLogger(run_dir, enabled=True)  # the per-step TensorBoard scalars, as in training
            logger.open_files()
            def run_steps(steps):
                timed = TimedBatches(batch, steps, device)
                train_one_epoch(train_model, teacher, timed, optimizer, scheduler, scaler, cfg, 1,
                                device, amp_dtype, logger)
                return timed.step_seconds()

            try:
                run_steps(args.warmup)
                memory.restart_peak()  # the timed steps' peak, after autotuning and compilation
                seconds = run_steps(args.steps)
            finally:
                logger.close()
    result['train'] = timing_figures(seconds, len(batch['name']), flops['train_step'], peak_tflops)
    result['train']['peak_memory_mb'] = memory.megabytes
    if args.eval:
        # As engine.evaluator.evaluate: the plain network (not compiled) in eval mode, one image.
        network = unwrap_model(train_model).eval()
        rgb, extra = first_images(batch, 1, device)
        with PeakMemory(device) as memory, torch.inference_mode(), autocast(device, amp_dtype):
            timed_runs(lambda: predict_eval(network, cfg, rgb, extra), 0, args.warmup, device)
            memory.restart_peak()
            seconds = timed_runs(lambda: predict_eval(network, cfg, rgb, extra), args.steps, 0, device)
        result['eval'] = timing_figures(seconds, 1, flops['eval_image'], peak_tflops)
        result['eval']['peak_memory_mb'] = memory.megabytes  # on top of the trained model's
    return result


def known_peak(gpu_name: Optional[str], precision: str, override: Optional[float]):
    """(peak TFLOP/s for `precision` or None, where it came from); `gpu_name` None on the CPU."""
    if override is not None:
        return override, '--peak-tflops'
    for key, peaks in GPU_PEAK_TFLOPS if gpu_name else ():
        if key.lower() in gpu_name.lower():
            kind = PEAK_KIND[precision]
            return peaks[kind], f'{key} dense {kind}'
    return None, 'unknown (give --peak-tflops)'


def benchmark_loader(cfg, spec, batch, size, steps, warmup, device):
    """Images/s of reading + training augmentation: per image in this process, and through the
    training loader with 0 and cfg.num_workers worker processes. With W workers at least 8 W batches
    are timed, so that the batches the workers prepared during start-up do not inflate the rate."""
    timed = {workers: max(steps, 8 * workers) for workers in sorted({0, cfg.num_workers})}
    cfg = type(cfg)(dict(cfg), batch_size=batch, image_height=size[0], image_width=size[1],
                    niters_per_epoch=warmup + max(timed.values()))
    dataset = spec.dataset(cfg, 'train', TrainTransform(cfg))
    images = iter(range((warmup + steps) * batch))
    seconds = timed_runs(lambda: dataset[(next(images),) * 2], steps * batch, warmup * batch)
    per_image = summary_ms(seconds)['ms_median'] / 1e3
    result = {'per_image_ms': per_image * 1e3, 'images_per_s_per_worker': 1 / per_image,
              'workers': {}}
    for workers, batches in timed.items():
        loader = build_train_loader(type(cfg)(dict(cfg), num_workers=workers),
                                    DistInfo(0, 1, 0, device), dataset=dataset)
        iterator = iter(loader)
        for _ in range(warmup):  # worker start-up is not counted
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        result['workers'][str(workers)] = batches * batch / (time.perf_counter() - start)
        del iterator, loader
    return result


def format_figure(value, spec, suffix=''):
    return 'n/a' if value is None else format(value, spec) + suffix


def print_table(title, results, part, unit):
    print(f'\n{title}')
    header = (f"{'variant':<28}{'img/s':>9}{unit:>10}{'min-max':>15}{'peak MB':>9}"
              f"{'TFLOP/s':>9}{'MFU':>8}{'speed-up':>10}")
    print(header)
    print('-' * len(header))
    for result in results:
        if 'error' in result:
            print(f"{result['variant']:<28}error: {result['error']}")
            continue
        row = result[part]
        mfu = format_figure(None if row['mfu'] is None else 100 * row['mfu'], '.1f', '%')
        speedup = format_figure(row['speedup_vs_fp32'], '.2f', 'x')
        print(f"{result['variant']:<28}{row['images_per_s']:>9.2f}{row['ms_median']:>10.1f}"
              f"{row['ms_min']:>8.1f}-{row['ms_max']:<6.1f}"
              f"{format_figure(row.get('peak_memory_mb'), '.0f'):>9}{row['tflops']:>9.3f}"
              f"{mfu:>8}{speedup:>10}")


def add_speedups(results, part):
    base = next((r[part] for r in results if r['variant'] == 'fp32' and part in r), None)
    for result in results:
        if part in result:
            result[part]['speedup_vs_fp32'] = (result[part]['images_per_s'] / base['images_per_s']
                                               if base else None)


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)
    device, batch_size, size, variants = check_args(args, parser, cfg)
    cfg.batch_size = batch_size
    spec = RunSpec.from_config(cfg, args.mode)
    if args.loader:  # the dataset must be there before any timing starts
        try:
            spec.dataset(cfg, 'train', TrainTransform(cfg))
        except (DatasetError, ConfigError) as e:
            parser.error(f'--loader: {e}')

    started = time.perf_counter()
    batch = random_batch(spec, batch_size, size, cfg.num_classes, device, cfg.seed)
    flops = count_step_flops(cfg, spec, device, batch)
    print(f"{args.config}: {args.mode} {cfg.backbone}, batch {batch_size} x {size[0]}x{size[1]} on "
          f"{device_info(device)['name']}; {args.warmup} warm-up + {args.steps} timed steps per variant")
    teacher_term = (f" + {flops['teacher_forward'] / 1e9:.2f} (teacher forward)"
                    if flops['teacher_forward'] else '')
    print(f"GFLOP per training step: 3 x {flops['model_forward'] / 1e9:.2f} ({args.mode} forward)"
          f"{teacher_term} = {flops['train_step'] / 1e9:.2f}; per evaluated image: "
          f"{flops['eval_image'] / 1e9:.2f}\n({TRAINING_FLOPS_CONVENTION})")

    results, peaks = [], {}
    cudnn_benchmark = torch.backends.cudnn.benchmark
    gpu_name = torch.cuda.get_device_name(device) if device.type == 'cuda' else None
    for variant in variants:
        peak, source = known_peak(gpu_name, variant.precision, args.peak_tflops)
        peaks[variant.name] = {'tflops': peak, 'source': source}
        reason = unsupported(variant, device)
        if reason is not None:
            print(f'{variant.name}: skipped: {reason}', file=sys.stderr)
            results.append({'variant': variant.name, 'error': reason})
            continue
        print(f'{variant.name} ...', flush=True)
        try:
            results.append(run_variant(cfg, spec, args, variant, device, batch, flops, peak))
        except Exception as e:  # a failed compile (or any failure) is that variant's row only
            message = f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
            print(f'{variant.name}: failed: {message}', file=sys.stderr)
            results.append({'variant': variant.name, 'error': message})
        finally:
            torch.backends.cudnn.benchmark = cudnn_benchmark
            if variant.compile:
                torch._dynamo.reset()

    add_speedups(results, 'train')
    print_table(f'training step ({args.mode}, batch {batch_size}, {size[0]}x{size[1]})', results,
                'train', 'ms/step')
    if args.eval:
        add_speedups(results, 'eval')
        print_table(f"evaluation forward (1 image, {size[0]}x{size[1]}, {cfg.eval_mode}; compiled "
                    f"variants run eager, as in evaluate())", results, 'eval', 'ms/img')
    peak_note = sorted({p['source'] for p in peaks.values()})
    print(f"MFU against: {', '.join(peak_note)}")

    loader = None
    if args.loader:
        loader = benchmark_loader(cfg, spec, batch_size, size, args.steps, args.warmup, device)
        best = max((r['train']['images_per_s'] for r in results if 'train' in r), default=None)
        print(f"\ndata loading ({cfg.dataset_path}, training augmentation, {size[0]}x{size[1]}): "
              f"{loader['per_image_ms']:.1f} ms per image = {loader['images_per_s_per_worker']:.1f} "
              f"images/s per worker")
        for workers, rate in loader['workers'].items():
            verdict = ('' if best is None else ' (faster than the fastest training variant)'
                       if rate > best else ' (SLOWER than training: input-bound)')
            print(f'  training loader, {workers} workers: {rate:.1f} images/s{verdict}')

    report = {
        **provenance('tools/benchmark.py', argv),
        'device': device_info(device),
        'versions': library_versions(device),
        'config': args.config, 'mode': args.mode, 'backbone': cfg.backbone, 'batch': batch_size,
        'size': list(size), 'steps': args.steps, 'warmup': args.warmup, 'flops': flops,
        'peak_tflops': peaks, 'memory': PeakMemory(device).kind, 'variants': results,
        'loader': loader, 'seconds': time.perf_counter() - started,
    }
    save_report(args.json, report)
    return report


if __name__ == '__main__':
    main()
