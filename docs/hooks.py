"""MkDocs hooks: the site's benchmark figures are rendered from the JSON records at build time.

`benchmarks.md` is BENCHMARKS.md rendered anew from benchmarks/results/ (its plots live in docs/), and every
`<!-- bench:NAME --><!-- /bench:NAME -->` pair in a page is filled by `benchmarks.report.fill`: no figure in
the site is typed by hand, and a new record shows at the next build.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # mkdocs imports this file by path; the records' readers live in the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks import results as R  # noqa: E402

BENCHMARKS_PAGE = "benchmarks.md"


@functools.cache
def records() -> list[R.Record]:
    return R.read_all([R.RESULTS_DIR])


def benchmarks_page() -> str:
    """BENCHMARKS.md as a page at the site's root: its plots' paths are relative to docs/ there."""
    return report.render_document(records()).replace("](docs/", "](")


def on_pre_build(config: MkDocsConfig) -> None:
    records.cache_clear()  # `make docs-serve` rebuilds: a record written since shows


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, BENCHMARKS_PAGE, content=benchmarks_page()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri == BENCHMARKS_PAGE:  # rendered whole already; its own markers name its sections
        return markdown
    return report.fill(markdown, records())
