"""Segmentation metrics from one confusion matrix, and their text table.

Everything is derived from the confusion matrix `hist` (rows = ground truth, columns = prediction),
so per-image matrices can be summed over images and processes before any ratio is taken:

* IoU_c = hist[c, c] / (row_c + col_c - hist[c, c]); accuracy_c = hist[c, c] / row_c
* mIoU / mean accuracy: means over the classes whose ratio is defined. A class absent from both the
  ground truth and the prediction has IoU 0/0 and is left out (NaN in the per-class list); a class
  that is predicted but absent from the ground truth has IoU 0 and counts. Accuracy is undefined
  for every class absent from the ground truth. These are the official code's `nanmean` rules.
* pixel accuracy = trace / total; frequency-weighted IoU = sum_c (row_c / total) * IoU_c.

Values are fractions in [0, 1]; tables print them in percent.
"""
import math

import torch


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts of (ground truth, prediction) pairs over all pixels
    of `label` that are not `ignore_index`. `pred` and `label` are integer tensors of one shape."""
    if pred.shape != label.shape:
        raise ValueError(f'prediction shape {tuple(pred.shape)} differs from label shape '
                         f'{tuple(label.shape)}')
    pred = pred.reshape(-1).long()
    label = label.reshape(-1).long()
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    for name, values in (('label', label), ('prediction', pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f'{name} values must be in [0, {num_classes - 1}] (or {ignore_index} '
                             f'for ignored label pixels); found values in '
                             f'[{values.min().item()}, {values.max().item()}]')
    counts = torch.bincount(num_classes * label + pred, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(hist: torch.Tensor) -> dict:
    """Metrics of a confusion matrix: 'iou' and 'acc' (lists of floats per class, NaN where
    undefined), 'miou', 'macc', 'pixel_acc', 'fwiou' (floats; NaN when no pixel is labelled)."""
    hist = hist.detach().to('cpu', torch.float64)
    true_positive = hist.diagonal()
    gt_count = hist.sum(dim=1)
    pred_count = hist.sum(dim=0)
    total = hist.sum()
    iou = true_positive / (gt_count + pred_count - true_positive)  # 0/0 -> NaN: class absent
    acc = true_positive / gt_count
    frequency = gt_count / total
    present = gt_count > 0
    return {
        'iou': iou.tolist(),
        'acc': acc.tolist(),
        'miou': iou.nanmean().item(),
        'macc': acc.nanmean().item(),
        'pixel_acc': (true_positive.sum() / total).item(),
        'fwiou': (frequency[present] * iou[present]).sum().item() if total > 0 else math.nan,
    }


def _percent(value: float) -> str:
    return '   n/a' if math.isnan(value) else f'{100 * value:6.2f}'


def format_metrics_table(metrics: dict, class_names) -> str:
    """Per-class IoU and accuracy (percent) with class names, then one summary line."""
    width = max(len('class'), *(len(name) for name in class_names))
    lines = [f'{"#":>3}  {"class":<{width}}     IoU     Acc']
    for index, (name, iou, acc) in enumerate(zip(class_names, metrics['iou'], metrics['acc'])):
        lines.append(f'{index:>3}  {name:<{width}}  {_percent(iou)}  {_percent(acc)}')
    lines.append(f'mIoU {_percent(metrics["miou"])}  mAcc {_percent(metrics["macc"])}  '
                 f'pixel acc {_percent(metrics["pixel_acc"])}  fwIoU {_percent(metrics["fwiou"])}')
    return '\n'.join(lines)
