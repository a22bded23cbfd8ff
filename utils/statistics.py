"""Statistics of comparisons between trained models: summaries over seeds, paired Student-t intervals
over seeds, and a paired bootstrap over the test images (torch-free: numpy and scipy)."""
import math
import statistics

import numpy
import scipy.stats


def seed_statistics(per_seed: dict) -> dict:
    """{'seeds': {seed: value}, 'n', 'mean', 'sd'}; mean None without seeds, sd None below two."""
    values = list(per_seed.values())
    return {'seeds': {str(s): v for s, v in per_seed.items()}, 'n': len(values),
            'mean': statistics.mean(values) if values else None,
            'sd': statistics.stdev(values) if len(values) > 1 else None}


def paired_interval(values, reference, confidence=0.95):
    """Mean of the paired differences values[i] - reference[i] and its Student-t interval
    mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n); the bounds are None below two pairs."""
    differences = [v - r for v, r in zip(values, reference, strict=True)]
    mean = statistics.mean(differences)
    if len(differences) < 2:
        return mean, None, None
    half = (scipy.stats.t.ppf((1 + confidence) / 2, len(differences) - 1)
            * statistics.stdev(differences) / math.sqrt(len(differences)))
    return mean, mean - half, mean + half


def miou_of_hist(hist: numpy.ndarray) -> float:
    """Mean IoU of a (ground truth, prediction) confusion matrix over the classes whose IoU is
    defined, as utils.metrics.segmentation_metrics computes it."""
    hist = hist.astype(numpy.float64)
    true_positive = numpy.diagonal(hist, axis1=-2, axis2=-1)
    union = hist.sum(axis=-1) + hist.sum(axis=-2) - true_positive
    with numpy.errstate(invalid='ignore', divide='ignore'):
        return float(numpy.nanmean(true_positive / union, axis=-1))


def paired_image_bootstrap(image_hists: list, reference_hists: list, resamples: int = 2000,
                           confidence: float = 0.95, seed: int = 0) -> dict:
    """The mIoU difference (points) of a variant to the reference, averaged over seeds, with a
    percentile bootstrap interval over the test images.

    `image_hists` and `reference_hists` hold, per seed (paired by position), an array
    (images, classes, classes) of per-image confusion matrices over the same test images. Each
    resample draws the test images with replacement once, for every cell alike, so it measures how
    much the conclusion depends on which test images there are (the seeds' spread is the t
    interval's business)."""
    variant = numpy.stack([numpy.asarray(h) for h in image_hists])       # seeds, images, C, C
    reference = numpy.stack([numpy.asarray(h) for h in reference_hists])
    if variant.shape != reference.shape:
        raise ValueError(f'bootstrap: per-image confusion matrices of shapes {variant.shape} and '
                         f'{reference.shape} do not pair')

    def difference(indices, axis=-1):
        """The statistic of one resample (a vector of image indices) or of a batch of them."""
        batch = numpy.atleast_2d(indices)
        means = numpy.array([numpy.mean([miou_of_hist(h[sample].sum(axis=0)) for h in variant])
                             - numpy.mean([miou_of_hist(h[sample].sum(axis=0)) for h in reference])
                             for sample in batch]) * 100
        return means if numpy.ndim(indices) > 1 else float(means[0])

    images = numpy.arange(variant.shape[1])
    result = scipy.stats.bootstrap((images,), difference, n_resamples=resamples, confidence_level=confidence,
                                   method='percentile', vectorized=True, random_state=seed)
    return {'mean': float(difference(images)), 'low': float(result.confidence_interval.low),
            'high': float(result.confidence_interval.high), 'resamples': resamples,
            'images': int(variant.shape[1]), 'seeds': int(variant.shape[0])}
