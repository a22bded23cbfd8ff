"""NYU Depth V2, MiT-B2 (paper: 54.7 mIoU)."""
from config.base import base_config

config = base_config()
config.backbone = 'mit_b2'
config.pretrained_model = 'pretrained/segformer/mit_b2.pth'
# The released MiT-B4 RGB teacher (no B2 teacher is released). To use a B2 teacher instead, train it
# with `bash train.sh config/nyu_b2.py --mode teacher`, then add
# `--teacher log/NYUDepthv2_mit_b2/teacher --opts teacher_backbone=mit_b2`.
config.teacher_checkpoint = 'pretrained/pre/nyu-rgb.pth'
config.teacher_backbone = 'mit_b4'
