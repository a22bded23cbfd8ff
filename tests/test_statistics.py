"""utils/statistics.py: the mIoU of a confusion matrix against utils.metrics, and the paired bootstrap
over test images against a hand-written resampling loop."""
import numpy
import pytest
import torch

from utils.metrics import segmentation_metrics
from utils.statistics import miou_of_hist, paired_image_bootstrap


def random_hists(seed, seeds=2, images=40, classes=4):
    return numpy.random.default_rng(seed).integers(0, 30, (seeds, images, classes, classes))


def test_miou_of_hist_matches_the_metrics_module():
    hist = random_hists(0)[0].sum(axis=0)
    hist[3] = 0          # a class absent from the labels and never predicted: IoU undefined
    hist[:, 3] = 0
    assert miou_of_hist(hist) == pytest.approx(segmentation_metrics(torch.from_numpy(hist))['miou'], rel=1e-12)


def test_bootstrap_against_a_resampling_loop():
    variant, reference = random_hists(1), random_hists(2)
    result = paired_image_bootstrap(list(variant), list(reference), resamples=3000, seed=5)

    def pooled(hists, idx):
        return numpy.mean([miou_of_hist(h[idx].sum(axis=0)) for h in hists])
    everything = numpy.arange(variant.shape[1])
    assert result['mean'] == pytest.approx(100 * (pooled(variant, everything) - pooled(reference, everything)))
    rng = numpy.random.default_rng(11)
    differences = []
    for _ in range(3000):
        idx = rng.integers(0, variant.shape[1], variant.shape[1])
        differences.append(100 * (pooled(variant, idx) - pooled(reference, idx)))
    low, high = numpy.percentile(differences, [2.5, 97.5])
    # Two independent sets of 3000 resamples: the bounds agree to a small fraction of the width.
    width = high - low
    assert result['low'] == pytest.approx(low, abs=0.1 * width)
    assert result['high'] == pytest.approx(high, abs=0.1 * width)
    assert result['low'] < result['mean'] < result['high']


def test_bootstrap_of_a_model_against_itself_is_zero_and_unpaired_shapes_are_refused():
    hists = random_hists(3)
    same = paired_image_bootstrap(list(hists), list(hists), resamples=200)
    assert same['mean'] == 0 and same['low'] == 0 and same['high'] == 0
    with pytest.raises(ValueError, match='do not pair'):
        paired_image_bootstrap(list(hists), list(hists[:, :10]))
