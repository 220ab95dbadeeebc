"""Evaluation of trained classifiers, one module per concern.

- :mod:`.calibration`: reliability bins and the expected calibration error.
- :mod:`.ood`: out-of-distribution scores (MSP, energy) and detection metrics (AUROC, FPR at TPR).
- :mod:`.geometry`: embedding alignment, uniformity, class distance ratio, 2-D projections.
- :mod:`.plots`: reliability diagrams, embedding scatter plots, PNG helpers (matplotlib, optional).
- :mod:`.attacks`: white-box L∞ attacks (FGSM, PGD) and the error under attack.
- :mod:`.report`: the full report of a model on a data set's splits, built from the above.
- :mod:`.inputs`: tensor argument checks shared by these modules.

Every public name of the first six modules is re-exported here. Note that the
function :func:`report` shadows the submodule of the same name as an
attribute of this package: ``from multimix.evaluation.report import ...``
reaches the module.
"""

from .attacks import Normalize, error_under_attack, fgsm, pgd
from .calibration import ece_from_bins, expected_calibration_error, reliability_bins
from .geometry import alignment, class_distance_ratio, project_2d, random_subset, uniformity
from .ood import auroc, energy_score, fpr_at_tpr, msp_score
from .plots import matplotlib_available, new_figure, plot_embeddings, plot_reliability_diagram, save_figure
from .report import default_epsilon, embedding_metrics, ood_detection, predict, report, robustness

__all__ = [
    # calibration
    "reliability_bins", "expected_calibration_error", "ece_from_bins",
    # ood
    "msp_score", "energy_score", "auroc", "fpr_at_tpr",
    # geometry
    "alignment", "uniformity", "class_distance_ratio", "project_2d", "random_subset",
    # plots
    "matplotlib_available", "new_figure", "save_figure", "plot_reliability_diagram", "plot_embeddings",
    # attacks
    "Normalize", "fgsm", "pgd", "error_under_attack",
    # report
    "predict", "default_epsilon", "robustness", "ood_detection", "embedding_metrics", "report",
]
