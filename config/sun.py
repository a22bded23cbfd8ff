"""SUN-RGBD settings shared by sun_b2.py and sun_b4.py (not a run config by itself)."""
from config.base import base_config

SUN_CLASSES = [
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
    'floor_mat', 'clothes', 'ceiling', 'books', 'fridge', 'tv', 'paper', 'towel', 'shower_curtain',
    'box', 'whiteboard', 'person', 'night_stand', 'toilet', 'sink', 'lamp', 'bathtub', 'bag']


def sun_config():
    C = base_config()
    C.dataset_name = 'SUNRGBD'
    C.dataset_path = 'datasets/SUNRGBD'
    C.label_folder = 'labels'
    C.num_train_imgs = 5285
    C.num_eval_imgs = 5050
    C.num_classes = 37
    C.class_names = list(SUN_CLASSES)
    C.image_height = 530
    C.image_width = 730
    C.eval_crop_size = [530, 730]
    C.lr = 8e-5
    C.batch_size = 16
    C.nepochs = 300
    C.teacher_checkpoint = 'pretrained/pre/sun-rgb.pth'
    return C


config = sun_config()
