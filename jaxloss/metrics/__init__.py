"""Metrics: top-k, balanced and macro top-k accuracy, expected calibration error, reliability plots.

All metrics except the plot are pure ``jax.numpy`` functions: jittable (with the integer
hyperparameters static), vmappable, and they take an optional per-example ``where`` mask for padded
evaluation batches. ECE is also available as mergeable per-bin sums (:class:`CalibrationBins`) for
streaming evaluation over batches and devices.
"""

from jaxloss.metrics._accuracy import balanced_accuracy as balanced_accuracy
from jaxloss.metrics._accuracy import macro_topk_accuracy as macro_topk_accuracy
from jaxloss.metrics._accuracy import per_class_recall as per_class_recall
from jaxloss.metrics._accuracy import topk_accuracy as topk_accuracy
from jaxloss.metrics._calibration import CalibrationBins as CalibrationBins
from jaxloss.metrics._calibration import calibration_bins as calibration_bins
from jaxloss.metrics._calibration import ece_from_bins as ece_from_bins
from jaxloss.metrics._calibration import expected_calibration_error as expected_calibration_error
from jaxloss.metrics._plots import reliability_diagram as reliability_diagram
