"""The figures the U²-Net paper publishes for U2NET and U2NET† on its six data sets (paper_figures.json)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class PaperFigures:
    """The paper's figures on one data set.

    Attributes:
        dataset: The data set's name as the paper spells it, e.g. "DUTS-TE".
        source: The paper and table they come from.
        models: Model ("U2NET", "U2NET†") -> metric key ("max_f", "mae", "weighted_f", "s_measure",
            "relax_boundary_f") -> value, as Tables 3 and 4 print it.
        labels: Metric key -> the paper's label.
    """

    dataset: str
    source: str
    models: dict[str, dict[str, float | None]]
    labels: dict[str, str]


@cache
def _table() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("paper_figures.json").read_text(encoding="utf-8")
    table: dict[str, Any] = json.loads(text)
    return table


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_datasets() -> tuple[str, ...]:
    """The six data sets, as the paper spells them."""
    return tuple(_table()["datasets"])


def paper_figures(dataset: str) -> PaperFigures:
    """The paper's figures for `dataset`; case, spaces and dashes do not matter ("duts-te", "DUTSTE").

    Raises:
        ValueError: For a data set the paper does not report, naming the six it does.
    """
    table = _table()
    names = {_key(name): name for name in table["datasets"]}
    name = names.get(_key(dataset))
    if name is None:
        raise ValueError(f"the paper reports no data set {dataset!r}; it reports {', '.join(table['datasets'])}")
    return PaperFigures(name, table["paper"], table["datasets"][name], table["metrics"])
