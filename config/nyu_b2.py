"""NYU Depth V2, MiT-B2 (paper: 54.7 mIoU)."""
from config.base import base_config

config = base_config()
config.backbone = 'mit_b2'
config.pretrained_model = 'pretrained/segformer/mit_b2.pth'
# No B2 teacher is released: train one with `bash train.sh config/nyu_b2.py --mode teacher`.
config.teacher_checkpoint = 'log/NYUDepthv2_mit_b2/teacher'   # the teacher's run directory: its best checkpoint
