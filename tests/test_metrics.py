"""utils.metrics against hand-computed figures and an independent float64 numpy computation, and
the palette of utils.visualize against the official colour map's first entries."""
import math

import numpy as np
import pytest
import torch

from utils.metrics import confusion_matrix, format_metrics_table, segmentation_metrics
from utils.visualize import colorize, label_colormap, to_label_png

NAN = math.nan

# 5 classes. Pixel (1, 0) is ignored (255), so the 3 predicted there does not count: class 3 is
# absent from both ground truth and prediction. Class 4 is predicted once but never in the truth.
LABEL = torch.tensor([[0, 0, 1],
                      [255, 2, 1]])
PRED = torch.tensor([[0, 1, 1],
                     [3, 4, 2]])
# rows = truth: 0 -> (0, 1); 1 -> (1, 2); 2 -> (4)
HAND_HIST = [[1, 1, 0, 0, 0],
             [0, 1, 1, 0, 0],
             [0, 0, 0, 0, 1],
             [0, 0, 0, 0, 0],
             [0, 0, 0, 0, 0]]
# IoU: 1/(2+1-1), 1/(2+2-1), 0/(1+1), 0/0, 0/(0+1)
HAND_IOU = [1 / 2, 1 / 3, 0.0, NAN, 0.0]
HAND_ACC = [1 / 2, 1 / 2, 0.0, NAN, NAN]
HAND_MIOU = (1 / 2 + 1 / 3 + 0 + 0) / 4          # class 3 left out, class 4 counts as 0
HAND_MACC = (1 / 2 + 1 / 2 + 0) / 3              # only classes present in the truth
HAND_PIXEL_ACC = 2 / 5                           # 5 labelled pixels, 2 right
HAND_FWIOU = 2 / 5 * 1 / 2 + 2 / 5 * 1 / 3 + 1 / 5 * 0


def assert_same_with_nan(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (math.isnan(a) and math.isnan(e)) or a == pytest.approx(e, abs=1e-12), (actual, expected)


def test_hand_example_confusion_matrix():
    hist = confusion_matrix(PRED, LABEL, num_classes=5, ignore_index=255)
    assert hist.dtype == torch.int64
    assert hist.tolist() == HAND_HIST


def test_hand_example_metrics():
    metrics = segmentation_metrics(torch.tensor(HAND_HIST))
    assert_same_with_nan(metrics['iou'], HAND_IOU)
    assert_same_with_nan(metrics['acc'], HAND_ACC)
    assert metrics['miou'] == pytest.approx(HAND_MIOU, abs=1e-12)
    assert metrics['macc'] == pytest.approx(HAND_MACC, abs=1e-12)
    assert metrics['pixel_acc'] == pytest.approx(HAND_PIXEL_ACC, abs=1e-12)
    assert metrics['fwiou'] == pytest.approx(HAND_FWIOU, abs=1e-12)


def numpy_reference(pred, label, num_classes, ignore_index):
    """Per-class counts with boolean masks in float64, no confusion matrix."""
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    iou, acc, freq = [], [], []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (label == c), dtype=np.float64)
        fp = np.sum((pred == c) & (label != c), dtype=np.float64)
        fn = np.sum((pred != c) & (label == c), dtype=np.float64)
        iou.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else np.nan)
        acc.append(tp / (tp + fn) if tp + fn > 0 else np.nan)
        freq.append((tp + fn) / label.size)
    iou, acc, freq = map(np.array, (iou, acc, freq))
    return {'iou': iou, 'acc': acc, 'miou': np.nanmean(iou), 'macc': np.nanmean(acc),
            'pixel_acc': np.mean(pred == label),
            'fwiou': np.sum(freq[freq > 0] * iou[freq > 0])}


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_maps_match_numpy(seed):
    rng = np.random.default_rng(seed)
    num_classes = 7
    # several images, summed matrices; class 5 never in the truth, class 6 in neither
    hist = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    preds, labels = [], []
    for _ in range(3):
        label = rng.choice([0, 1, 2, 3, 4, 255], size=(17, 23), p=[.3, .2, .2, .1, .1, .1])
        pred = np.where(rng.random(label.shape) < 0.6, label, rng.integers(0, 6, label.shape))
        pred = np.where(pred == 255, 0, pred)
        hist += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), num_classes)
        preds.append(pred)
        labels.append(label)
    expected = numpy_reference(np.concatenate(preds), np.concatenate(labels), num_classes, 255)
    metrics = segmentation_metrics(hist)
    assert_same_with_nan(metrics['iou'], expected['iou'].tolist())
    assert_same_with_nan(metrics['acc'], expected['acc'].tolist())
    assert math.isnan(metrics['iou'][6]) and metrics['iou'][5] == 0.0
    for key in ('miou', 'macc', 'pixel_acc', 'fwiou'):
        assert metrics[key] == pytest.approx(float(expected[key]), rel=1e-12), key


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match='shape'):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match=r'label values must be in \[0, 3\]'):
        confusion_matrix(torch.zeros(2, 2), torch.tensor([[0, 4], [1, 255]]), 4)
    with pytest.raises(ValueError, match='prediction values'):
        confusion_matrix(torch.tensor([[0, 9]]), torch.tensor([[0, 1]]), 4)


def test_no_labelled_pixel_gives_nan_not_an_error():
    metrics = segmentation_metrics(torch.zeros(3, 3, dtype=torch.int64))
    assert all(math.isnan(metrics[k]) for k in ('miou', 'macc', 'pixel_acc', 'fwiou'))


def test_table_names_classes_and_prints_percent():
    metrics = segmentation_metrics(torch.tensor(HAND_HIST))
    table = format_metrics_table(metrics, ['wall', 'floor', 'chair', 'lamp', 'box'])
    lines = table.splitlines()
    assert len(lines) == 1 + 5 + 1
    assert lines[2].split() == ['1', 'floor', '33.33', '50.00']
    assert lines[4].split() == ['3', 'lamp', 'n/a', 'n/a']
    assert lines[-1].split() == ['mIoU', f'{100 * HAND_MIOU:.2f}', 'mAcc', f'{100 * HAND_MACC:.2f}',
                                 'pixel', 'acc', '40.00', 'fwIoU', f'{100 * HAND_FWIOU:.2f}']


def test_palette_is_the_voc_colour_map():
    # first entries of the official get_class_colors (PASCAL VOC colour map)
    assert label_colormap(9).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                          [0, 0, 128], [128, 0, 128], [0, 128, 128],
                                          [128, 128, 128], [64, 0, 0]]
    assert len({tuple(c) for c in label_colormap(256).tolist()}) == 256


def test_label_png_convention_and_colours():
    png = to_label_png(np.array([[0, 39], [255, 2]]))
    assert png.dtype == np.uint8 and png.tolist() == [[1, 40], [0, 3]]
    colours = colorize(png, num_classes=40)
    assert colours[1, 0].tolist() == [0, 0, 0]            # unlabeled stays black
    assert colours[0, 0].tolist() == [128, 0, 0]          # class 0 -> entry 1
