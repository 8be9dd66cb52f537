"""Evaluate a served model the way the U²-Net paper does: MAE, F-, weighted F-, S- and E-measure, PR curves.

Needs the `eval` extra (`pip install 'u2serve[eval]'`: PySODMetrics and matplotlib).

    >>> from pathlib import Path
    >>> from u2net_client import U2NetClient
    >>> from u2serve.apps.evaluation import Report, evaluate_served, pair_by_stem
    >>> pairing = pair_by_stem(Path("images"), Path("gt"), source_role="image")
    >>> with U2NetClient() as client:
    ...     result = evaluate_served(client, pairing.pairs, "u2netp")
    >>> Report([result], Path("gt")).write(Path("report"))
"""

from u2serve.apps.evaluation._metrics import BETA2, LABELS, Curves, MetricAccumulator, Metrics, resize_to
from u2serve.apps.evaluation._pairs import EvaluationInputError, Pair, Pairing, pair_by_stem, read_mask
from u2serve.apps.evaluation._paper import PaperFigures, paper_datasets, paper_figures
from u2serve.apps.evaluation._report import F_PLOT, PLOT_SIZE, PR_PLOT, Report, render_table
from u2serve.apps.evaluation._run import Evaluation, evaluate_folder, evaluate_served

__all__ = [
    "BETA2",
    "F_PLOT",
    "LABELS",
    "PLOT_SIZE",
    "PR_PLOT",
    "Curves",
    "Evaluation",
    "EvaluationInputError",
    "MetricAccumulator",
    "Metrics",
    "Pair",
    "Pairing",
    "PaperFigures",
    "Report",
    "evaluate_folder",
    "evaluate_served",
    "pair_by_stem",
    "paper_datasets",
    "paper_figures",
    "read_mask",
    "render_table",
    "resize_to",
]
