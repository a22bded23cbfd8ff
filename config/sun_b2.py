"""SUN-RGBD, MiT-B2 (paper: 50.6 mIoU)."""
from config.sun import sun_config

config = sun_config()
config.backbone = 'mit_b2'
config.pretrained_model = 'pretrained/segformer/mit_b2.pth'
# No B2 teacher is released: train one with `bash train.sh config/sun_b2.py --mode teacher`.
config.teacher_checkpoint = 'log/SUNRGBD_mit_b2/teacher'   # the teacher run's last checkpoint
