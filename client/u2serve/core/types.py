"""The core's plain values: the salient object's box, which the pipeline finds and a result reports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """The salient object's bounding box, in pixels of the input as displayed."""

    x: int
    y: int
    width: int
    height: int

    def as_ltrb(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), the form PIL's Image.crop takes."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)
