"""The demo: a MiT-B0 teacher and student on small synthetic RGB-D rooms, a few minutes on a CPU.

`bash train.sh config/demo.py` generates datasets/Synthetic if it is absent (tools/make_synthetic.py),
trains the RGB teacher, the CMX baseline and the PrimKD student, and evaluates each (tools/demo.py).
"""
from config.base import base_config

config = base_config()
config.dataset_name = 'Synthetic'
config.dataset_path = 'datasets/Synthetic'
config.rgb_format = '.png'
config.x_format = '.png'
config.num_train_imgs = 200
config.num_eval_imgs = 50
config.num_classes = 8
config.class_names = ['wall', 'floor', 'ceiling', 'box', 'crate', 'poster', 'panel', 'ball']
config.image_height = 120
config.image_width = 160
config.channel_order = 'rgb'

config.backbone = 'mit_b0'
config.pretrained_model = None          # no ImageNet weights: everything starts from scratch
config.teacher_checkpoint = 'log/demo/teacher'   # the teacher run's last checkpoint (validation = test here)
config.decoder_embed_dim = 128
config.drop_path_rate = 0.0

config.lr = 1e-3
config.batch_size = 8
config.nepochs = 12
config.warm_up_epoch = 1
config.num_workers = 2
config.train_scale_array = [0.75, 1, 1.25]

config.eval_step = 4
config.eval_mode = 'whole'
config.eval_crop_size = [120, 160]
config.checkpoint_step = 100
config.log_dir = 'log/demo'
