"""The demo on 'nyu_like' synthetic rooms: RGB is the primary modality, as on NYU Depth V2.

The same model and recipe as config/demo.py, on datasets/SyntheticNYULike (generated when absent),
where panels and posters differ in appearance as well as depth and the depth is poor (noise of 50%,
holes over up to 95% of an image), so that the RGB-only model reaches most of the RGB-D baseline's
mIoU (see docs/data.md, "Synthetic rooms", for the presets and their measured ratios).
"""
from config.demo import demo_config

config = demo_config()
config.dataset_name = 'SyntheticNYULike'
config.dataset_path = 'datasets/SyntheticNYULike'
config.synthetic_preset = 'nyu_like'
config.teacher_checkpoint = 'log/demo_nyulike/teacher'   # the teacher run's last checkpoint
config.log_dir = 'log/demo_nyulike'
