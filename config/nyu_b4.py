"""NYU Depth V2, MiT-B4: the official PrimKD setting (paper: 57.8 mIoU)."""
from config.base import base_config

config = base_config()
