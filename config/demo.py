"""The demo: a MiT-B0 teacher and student on small synthetic RGB-D rooms, a few minutes on a CPU.

`bash train.sh config/demo.py` generates datasets/Synthetic if it is absent (the 'depth_decisive'
rooms of dataloader/synthetic_rooms.py, where posters and panels differ only in depth), trains the RGB
teacher, the CMX baseline and the PrimKD student, and evaluates each (tools/demo.py).
config/demo_nyulike.py starts from here.
"""
from config.base import base_config


def demo_config():
    C = base_config()
    C.dataset_name = 'Synthetic'
    C.dataset_path = 'datasets/Synthetic'
    C.synthetic_preset = 'depth_decisive'
    C.rgb_format = '.png'
    C.x_format = '.png'
    C.num_train_imgs = 200
    C.num_eval_imgs = 50
    C.num_classes = 8
    C.class_names = ['wall', 'floor', 'ceiling', 'box', 'crate', 'poster', 'panel', 'ball']
    C.image_height = 120
    C.image_width = 160
    C.channel_order = 'rgb'

    C.backbone = 'mit_b0'
    C.pretrained_model = None          # no ImageNet weights: everything starts from scratch
    C.teacher_checkpoint = 'log/demo/teacher'   # the teacher run's last checkpoint (validation = test)
    C.decoder_embed_dim = 128
    C.drop_path_rate = 0.0

    C.lr = 1e-3
    C.batch_size = 8
    C.nepochs = 12
    C.warm_up_epoch = 1
    C.num_workers = 2
    C.train_scale_array = [0.75, 1, 1.25]

    C.eval_step = 4
    C.eval_mode = 'whole'
    C.eval_crop_size = [120, 160]
    C.checkpoint_step = 100
    C.log_dir = 'log/demo'
    return C


config = demo_config()
