"""Data: the RGB-X dataset in the official layout, its transforms and the training loader."""
from .dataset import DatasetError, RGBXDataset, check_dataset
from .loader import build_train_loader
from .transforms import EvalTransform, TrainTransform

__all__ = ['DatasetError', 'RGBXDataset', 'check_dataset', 'build_train_loader', 'EvalTransform',
           'TrainTransform']
