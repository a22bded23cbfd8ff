"""Parameters and multiply-adds of the teacher or the student.

    python tools/flops.py -c config/nyu_b4.py [--mode teacher|student] [--size H W] [--opts ...]

The teacher is the one that guides the student: of the config's teacher_backbone and
teacher_modality (an RGB-X teacher is counted on RGB and the extra modality).

The main figures leave out the student's training-only distillation heads; a last line gives them
with the heads of cfg.mask_single for cfg.losses (the figures quoted for the official PrimKD
student, 139.9M / 158.3G for MiT-B4 at 480x640, include its `hint` heads; without them they are
139.9M / 157.9G). Multiply-adds are counted by torch.utils.flop_counter.FlopCounterMode on one
forward pass of batch size 1 in eval mode: convolutions and matrix products, attention included; the
counter reports FLOPs = 2 x multiply-adds. Norms, activations, softmax, pooling and interpolation
are not counted.

The counting lives in utils/op_counts.py, which also supplies the formulas the counter lacks for fused
attention kernels (on the CPU, `aten._scaled_dot_product_flash_attention_for_cpu`), so that the
attention products are not silently counted as zero.
"""
import argparse

import torch

from config import add_config_args, config_from_args
from models import build_model, build_teacher, teacher_backbone
from utils.constants import LAST_STAGE_STRIDE, MODES, STUDENT
from utils.op_counts import count_macs, count_parameters


def main(argv=None):
    parser = add_config_args(argparse.ArgumentParser(
        description='Count the parameters and multiply-adds of the teacher or student.'))
    parser.add_argument('--mode', choices=MODES, default=STUDENT,
                        help='which model (default: %(default)s)')
    parser.add_argument('--size', nargs=2, type=int, metavar=('H', 'W'),
                        help="input height and width (default: the config's image size)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)
    height, width = args.size or (cfg.image_height, cfg.image_width)
    if min(height, width) < LAST_STAGE_STRIDE:
        parser.error(f"--size must be at least {LAST_STAGE_STRIDE} x {LAST_STAGE_STRIDE} (the encoder's stride), "
                     f"got {height} {width}")

    # The student is built with its training-only heads so that both figures can be shown.
    if args.mode == 'student':
        model, description = build_model(cfg, 'student', distill=True).eval(), f"{cfg.backbone} student"
    else:
        model = build_teacher(cfg).eval()
        description = f"{teacher_backbone(cfg)} teacher ({cfg.teacher_modality})"
    rgb = torch.randn(1, 3, height, width)
    inputs = (rgb, torch.randn_like(rgb)) if model.takes_extra else (rgb,)
    macs = count_macs(model, *inputs)
    heads = model.distill_heads
    head_params = count_parameters(heads) if heads is not None else 0
    params = count_parameters(model) - head_params
    model_macs = macs['total'] - macs.get('distill_heads', 0)

    print(f"config {args.config}: {description}, {cfg.num_classes} classes, "
          f"input 1x3x{height}x{width}")
    print(f"parameters:    {params / 1e6:.2f} M")
    print(f"multiply-adds: {model_macs / 1e9:.2f} G (encoder {macs['encoder'] / 1e9:.2f} G, "
          f"decoder {macs['decoder'] / 1e9:.2f} G)")
    if heads is not None:
        print(f"with the training-only {cfg.mask_single} heads for {', '.join(cfg.losses)}: "
              f"{(params + head_params) / 1e6:.2f} M parameters, "
              f"{macs['total'] / 1e9:.2f} G multiply-adds")


if __name__ == '__main__':
    main()
