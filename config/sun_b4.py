"""SUN-RGBD, MiT-B4 (paper: 52.5 mIoU)."""
from config.sun import sun_config

config = sun_config()
