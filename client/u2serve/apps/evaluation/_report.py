"""The report: metrics.json is the data; metrics.md, the terminal table and the two PNG plots are rendered from it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from u2serve.apps.evaluation._metrics import BETA2, GT_THRESHOLD, LABELS
from u2serve.apps.evaluation._paper import PaperFigures
from u2serve.apps.evaluation._run import Evaluation

PLOT_INCHES = (8.0, 6.0)
PLOT_DPI = 100
PLOT_SIZE = (800, 600)  # pixels, width x height: PLOT_INCHES at PLOT_DPI
PR_PLOT = "pr_curves.png"
# Line styles cycle too, so that curves lying on one another (a model and its published maps) stay visible.
_STYLES = ("-", "--", ":", "-.")
F_PLOT = "f_measure.png"
CONVENTIONS = {
    "f_measure_beta2": BETA2,
    "ground_truth": f"binarised: foreground where the mask's value > {GT_THRESHOLD} (0..255)",
    "prediction": "min-max normalised per image to 0..1; thresholds 0..255 on the 8-bit map",
    "resize": "a prediction of another size than its ground truth is resized to the ground truth's size, "
    "bilinear (cv2.INTER_LINEAR), as the standard SOD evaluation code does",
    "averaging": "every metric is computed per image, then averaged over the images; the PR and F curves are "
    "per-threshold means over the images",
}


@dataclass(frozen=True)
class Report:
    """Everything a run measured, ready to write.

    Attributes:
        evaluations: One per served model or predictions folder, in the order given.
        ground_truth: The ground-truth folder.
        images: The images folder that was served, if any.
        paper: The paper's figures for the data set named with --paper, if any.
    """

    evaluations: Sequence[Evaluation]
    ground_truth: Path
    images: Path | None = None
    paper: PaperFigures | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what metrics.json holds)."""
        return {
            "ground_truth": str(self.ground_truth),
            "images": str(self.images) if self.images else None,
            "pysodmetrics": version("pysodmetrics"),
            "conventions": CONVENTIONS,
            "models": {
                e.name: {
                    "source": e.source,
                    "largest_batch": e.largest_batch,
                    "skipped": list(e.skipped),
                    **e.metrics.to_dict(),
                }
                for e in self.evaluations
            },
            "paper": _paper_dict(self.paper),
        }

    def write(self, folder: Path) -> list[Path]:
        """Writes metrics.json, metrics.md and the two plots into `folder`; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        paths = [folder / "metrics.json", folder / "metrics.md", folder / PR_PLOT, folder / F_PLOT]
        paths[0].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths[1].write_text(render_markdown(data), encoding="utf-8")
        plot_pr_curves(data, paths[2])
        plot_f_measure(data, paths[3])
        return paths


def _paper_dict(paper: PaperFigures | None) -> dict[str, Any] | None:
    if paper is None:
        return None
    return {"dataset": paper.dataset, "source": paper.source, "labels": paper.labels, "models": paper.models}


def table_rows(data: dict[str, Any]) -> list[list[str]]:
    """Header and one row per model, then the paper's rows; "—" where a figure is not known."""
    rows = [["model", "images", *LABELS.values()]]
    for name, m in data["models"].items():
        rows.append([name, str(m["images"]), *(f"{m[key]:.4f}" for key in LABELS)])
    paper = data["paper"]
    if paper is not None:
        for name, figures in paper["models"].items():
            cells = (f"{figures[key]:.3f}" if figures.get(key) is not None else "—" for key in LABELS)
            rows.append([f"paper {name} ({paper['dataset']})", "", *cells])
    return rows


def render_table(data: dict[str, Any]) -> str:
    """The terminal table: aligned columns."""
    rows = table_rows(data)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def render_markdown(data: dict[str, Any]) -> str:
    """metrics.md: the table, what was skipped and resized, the conventions, the plots."""
    rows = table_rows(data)
    lines = ["# Evaluation", "", f"Ground truth: `{data['ground_truth']}`"]
    if data["images"]:
        lines.append(f"Images served: `{data['images']}`")
    lines += ["", "| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines.append("")
    for name, m in data["models"].items():
        batch = f", largest server batch {m['largest_batch']}" if m["largest_batch"] else ""
        lines.append(f"- **{name}**: {m['source']}; {m['images']} images, {m['resized']} predictions resized{batch}.")
        lines += [f"  - skipped: {item}" for item in m["skipped"]]
    if data["paper"] is not None:
        lines += [
            "",
            f"Paper figures: {data['paper']['source']}. A dash: a metric the paper does not report.",
        ]
    lines += ["", f"Computed with PySODMetrics {data['pysodmetrics']}:"]
    lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in data["conventions"].items()]
    lines += ["", f"![PR curves]({PR_PLOT})", "", f"![F-measure against threshold]({F_PLOT})", ""]
    return "\n".join(lines)


def _figure() -> tuple[Figure, Any]:
    # A bare Figure on the Agg canvas: no pyplot, no global backend switch in the caller's process.
    figure = Figure(figsize=PLOT_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def plot_pr_curves(data: dict[str, Any], path: Path) -> None:
    """The precision-recall curves of every model on one chart, PLOT_SIZE pixels."""
    figure, ax = _figure()
    for i, (name, m) in enumerate(data["models"].items()):
        label = f"{name} (maxFβ {m['max_f']:.3f})"
        ax.plot(m["curves"]["recall"], m["curves"]["precision"], _STYLES[i % len(_STYLES)], label=label)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    figure.savefig(path, dpi=PLOT_DPI)


def plot_f_measure(data: dict[str, Any], path: Path) -> None:
    """F-measure (β² = 0.3) against the threshold 0..255 for every model, PLOT_SIZE pixels."""
    figure, ax = _figure()
    for i, (name, m) in enumerate(data["models"].items()):
        f = m["curves"]["f_measure"]
        ax.plot(range(len(f)), f, _STYLES[i % len(_STYLES)], label=f"{name} (meanFβ {m['mean_f']:.3f})")
    ax.set(xlabel="threshold (8-bit)", ylabel="Fβ", xlim=(0, 255), ylim=(0, 1.01), title="F-measure against threshold")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    figure.savefig(path, dpi=PLOT_DPI)
