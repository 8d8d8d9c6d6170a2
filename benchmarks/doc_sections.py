"""BENCHMARKS.md sections written by the focused benchmarks (``neighbours.py``,
``selection_objective.py``): each is kept in ``benchmarks/results/sections/NAME.md``, which
``alscale bench --update-docs`` (``suite.py``) appends when it regenerates BENCHMARKS.md, and
spliced into BENCHMARKS.md between the section's own markers."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ROOT / "benchmarks" / "results" / "sections"


def save_section(name: str, markdown: str) -> Path:
    """Write ``markdown`` to ``benchmarks/results/sections/NAME.md``; returns the path."""
    path = SECTIONS / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown.rstrip("\n") + "\n")
    return path


def splice_into_benchmarks_md(markdown: str, begin: str, end: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace BENCHMARKS.md's text from ``begin`` to ``end`` (markers that ``markdown`` starts and
    ends with) by ``markdown``, or append it when the markers are not there yet."""
    text = path.read_text()
    if begin in text:
        text = text[:text.index(begin)] + markdown.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + markdown.rstrip("\n") + "\n"
    path.write_text(text)
