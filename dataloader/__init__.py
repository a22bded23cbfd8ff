"""Data: the RGB-X dataset in the official layout, its transforms, the training loader and the
synthetic RGB-D scenes of the demo."""
from .dataset import DatasetError, RGBXDataset, check_dataset
from .loader import build_train_loader
from .transforms import EvalTransform, TrainTransform

__all__ = ['DatasetError', 'RGBXDataset', 'check_dataset', 'build_train_loader', 'EvalTransform',
           'TrainTransform']
