"""The README and the documentation site, read as a user reads them.

The site is built as `make docs` builds it (strict) and its pages are read back as HTML: the benchmark tables
show what the records say, nothing is fetched from elsewhere, every SDK name has its reference. Every command
on the pages is checked: a make target `make help` lists, flags the command's parser takes, Python that
compiles and calls the SDK with arguments it has; a block that needs a running server says so with an
`<!-- illustrative: why -->` comment.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from benchmarks import report
from benchmarks import results as R

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if p.parent.name != "evaluation")  # evaluation/: the tool writes it
DOCUMENTS = [README, *PAGES]
VENV_BIN = Path(sys.executable).parent
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console"}
ILLUSTRATIVE = re.compile(r"<!-- illustrative: .+ -->")
# A measured figure typed into prose: a throughput, or a ratio that is no target (targets read "≥ 1.5×").
TYPED_FIGURE = re.compile(r"\d+(?:\.\d+)?\s?(?:img/s|frames/s|GFLOP/s|ms per image)|(?<![≥≤] )\b\d+\.\d+\s?×")


# ---- the blocks of a page ----


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # the fence's line, 1-based
    language: str
    text: str
    illustrative: bool

    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, each with whether an illustrative comment stands above it."""
    found = []
    lines = document.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = lines[i - 1] if i else ""
        found.append(Block(document, i + 1, fence[1], "\n".join(lines[i + 1 : end]), bool(ILLUSTRATIVE.match(above))))
        i = end + 1
    return found


def commands(block: Block) -> list[list[str]]:
    """The block's commands as a shell reads them: continuation lines joined, comments dropped, split at `;`."""
    found: list[list[str]] = []
    for line in block.text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(re.sub(r"(^|\s)#.*$", "", line), posix=True, punctuation_chars=";")
        lexer.whitespace_split, lexer.commenters = True, ""
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token != ";":
                words.append(token)
            elif words:
                found.append(words)
                words = []
    return found


def all_blocks(language: set[str]) -> list[Block]:
    return [b for d in DOCUMENTS for b in blocks(d) if b.language in language]


# ---- the commands ----


@functools.cache
def make_targets() -> frozenset[str]:
    """The targets `make help` names, as a person reads them."""
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return frozenset(re.findall(r"\bmake ([a-z][\w-]*)", shown)) | {"help"}


def check_make(words: list[str]) -> str | None:
    targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    missing = [t for t in targets if t not in make_targets()]
    return f"make {' '.join(missing)}: not in `make help`" if missing else None


def check_parser(parse: Callable[[list[str]], object], words: list[str]) -> str | None:
    """Parses the documented arguments with the command's own parser: unknown flags and bad values fail."""
    try:
        parse(words)
    except SystemExit as exit_:
        return f"{shlex.join(words)}: its parser refuses it (exit {exit_.code})"
    return None


def check_u2net_client(words: list[str]) -> str | None:
    from u2serve.apps import cli

    return check_parser(cli.build_parser().parse_args, words[1:])


def check_web(words: list[str]) -> str | None:
    from u2serve.web import settings

    return check_parser(settings.parser().parse_args, words)


def check_script(words: list[str]) -> str | None:
    """`python SCRIPT ...` or `python -m MODULE ...`: every flag before a lone `--` is in its --help."""
    target = words[:2] if words[0] == "-m" else words[:1]
    rest = words[len(target) :]
    ours = rest[: rest.index("--")] if "--" in rest else rest
    head = [sys.executable, *target]
    shown = subprocess.run([*head, *ours[:1], "--help"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        shown = subprocess.run([*head, "--help"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        return f"{shlex.join(words)}: --help fails ({shown.stderr.strip()[-200:]})"
    unknown = [w.split("=")[0] for w in ours if w.startswith("-") and w.split("=")[0] not in shown.stdout]
    return f"{shlex.join(words)}: {', '.join(unknown)} not in its --help" if unknown else None


def check_command(words: list[str]) -> str | None:
    """None when the command is one the tests can check and it checks out; else what is wrong."""
    program = Path(words[0]).name
    if program == "make":
        return check_make(words)
    if program == "u2net-client":
        return check_u2net_client(words)
    if program in ("python", "python3") and words[1:3] == ["-m", "u2serve.web"]:
        return check_web(words[3:])
    if program in ("python", "python3") and len(words) > 1 and (words[1] == "-m" or words[1].endswith(".py")):
        return check_script(words[1:])
    return f"{shlex.join(words)}: no test runs this; mark its block <!-- illustrative: why -->"


def test_every_command_block_is_checked_or_marked_illustrative() -> None:
    problems = []
    for block in all_blocks(COMMAND_LANGUAGES):
        for words in commands(block):
            program = Path(words[0]).name
            if block.illustrative and program not in ("make", "u2net-client"):
                continue  # needs a server or a cluster; make and u2net-client lines are checked anyway
            if (problem := check_command(words)) is not None:
                problems.append(f"{block.where()}: {problem}")
    assert not problems, "\n".join(problems)


def test_the_docs_name_commands_that_exist() -> None:
    blocks_ = all_blocks(COMMAND_LANGUAGES)
    named = {Path(w[0]).name for b in blocks_ for w in commands(b)}
    assert {"make", "u2net-client"} <= named
    subcommands = {w[1] for b in blocks_ for w in commands(b) if Path(w[0]).name == "u2net-client"}
    assert subcommands >= {"cutout", "mask", "video", "evaluate", "ping", "models", "scale"}
    for sub in sorted(subcommands):  # what a person types to learn more: it works and says something
        shown = subprocess.run([VENV_BIN / "u2net-client", sub, "--help"], capture_output=True, text=True)
        assert shown.returncode == 0 and f"u2net-client {sub}" in shown.stdout, shown.stderr


def test_every_make_target_named_in_prose_is_in_make_help() -> None:
    named = {t for d in DOCUMENTS for t in re.findall(r"`make ([a-z][\w-]*)", d.read_text())}
    assert named >= {"serve", "test", "docs", "stop"}
    assert not named - make_targets(), f"not in `make help`: {sorted(named - make_targets())}"


def test_the_readme_leads_with_the_two_commands_and_stays_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    first = next(b for b in blocks(README) if b.language in COMMAND_LANGUAGES)
    assert [w[:2] for w in commands(first)] == [["make", "serve"], ["make", "test"]]
    assert "](docs/web-page.png)" in text
    links = re.findall(r"\]\((docs/[^)#]+\.md)", text)
    assert len(links) >= 15 and all((ROOT / link).is_file() for link in links)


# ---- Python snippets ----


def accepted_keywords(function: Callable[..., object]) -> set[str] | None:
    """The keyword names `function` takes; None when it takes any. `**keywords: Unpack[TypedDict]` counts its keys."""
    names = set()
    for p in inspect.signature(function).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            hint = typing.get_type_hints(function, include_extras=True).get(p.name)
            if typing.get_origin(hint) is not typing.Unpack:
                return None
            names |= set(typing.get_type_hints(typing.get_args(hint)[0]))
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(p.name)
    return names


def sdk_calls(tree: ast.AST) -> list[tuple[str, Callable[..., object], ast.Call]]:
    """The snippet's calls of SDK objects: the clients' constructors, their methods (on a name bound by
    `with U2NetClient(...) as name`), and the rembg drop-in's functions."""
    import u2net_client
    import u2net_client.rembg

    classes = {"U2NetClient": u2net_client.U2NetClient, "AsyncU2NetClient": u2net_client.AsyncU2NetClient}
    functions: dict[str, Callable[..., object]] = {**classes, "new_session": u2net_client.rembg.new_session}
    functions["remove"] = u2net_client.rembg.remove
    bound: dict[str, type] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                call, name = item.context_expr, item.optional_vars
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and isinstance(name, ast.Name):
                    bound.update({name.id: classes[call.func.id]} if call.func.id in classes else {})
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in functions:
            found.append((func.id, functions[func.id], node))
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in bound:
            cls = bound[func.value.id]
            method = getattr(cls, func.attr, None)
            assert method is not None, f"{cls.__name__} has no {func.attr}"
            found.append((f"{cls.__name__}.{func.attr}", method, node))
    return found


@pytest.mark.parametrize("block", all_blocks({"python"}), ids=Block.where)
def test_python_snippet_compiles_and_calls_the_sdk_as_it_is(block: Block) -> None:
    code = compile(block.text, block.where(), "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    compile(code, block.where(), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    for node in ast.walk(code):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "u2net_client":
            module = __import__(node.module, fromlist=["_"])
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"{block.where()}: {node.module} has no {missing}"
    for name, function, call in sdk_calls(code):
        accepted = accepted_keywords(function)
        given = {k.arg for k in call.keywords if k.arg is not None}
        assert accepted is None or given <= accepted, f"{block.where()}: {name} takes no {sorted(given - accepted)}"


def test_the_sdk_page_shows_both_clients_and_the_rembg_drop_in() -> None:
    snippets = [b.text for d in (DOCS / "sdk.md", DOCS / "http.md") for b in blocks(d) if b.language == "python"]
    for name in ("U2NetClient", "AsyncU2NetClient", "u2net_client.rembg"):
        assert any(name in s for s in snippets), name


# ---- figures come from the records ----


@functools.cache
def records() -> list[R.Record]:
    return R.read_all([R.RESULTS_DIR])


def test_the_readme_headline_is_what_the_records_render() -> None:
    text = README.read_text()
    assert "<!-- bench:headline -->" in text
    assert report.fill(text, records()) == text, "run: make readme"


def test_pages_carry_only_known_sections_and_type_no_figures() -> None:
    for document in DOCUMENTS:
        text = document.read_text()
        report.fill(text, records())  # KeyError for an unknown section's marker
        prose = re.sub(r"```.*?```|<!-- bench:([\w-]+) -->.*?<!-- /bench:\1 -->", "", text, flags=re.DOTALL)
        typed = TYPED_FIGURE.findall(prose)
        assert not typed, f"{document.relative_to(ROOT)} types measured figures {typed}: render them from records"


def test_a_section_renders_from_the_newest_record_and_a_stale_one_is_refilled() -> None:
    stale = "a\n<!-- bench:video -->\n| old | table |\n<!-- /bench:video -->\nb\n"
    filled = report.fill(stale, records())
    assert "| old | table |" not in filled and filled.startswith("a\n") and filled.endswith("\nb\n")
    assert report.fill(filled, records()) == filled
    newest = max((r for r in records() if isinstance(r, R.VideoRun) and r.kind == "cpu-avx2"), key=lambda r: r.date)
    assert f"{newest.served.fps:.2f}" in filled and newest.commit[:7] in filled
    with pytest.raises(KeyError, match="no such section"):
        report.fill("<!-- bench:nothing -->\n<!-- /bench:nothing -->", records())


def test_the_engine_chain_on_its_page_is_the_handlers() -> None:
    from handler import engine

    text = (DOCS / "engines.md").read_text()
    shown = re.search(r"<!-- docs:engine-chain -->\n(.*?)\n<!-- /docs:engine-chain -->", text, re.DOTALL)
    assert shown is not None
    assert re.findall(r"`([\w-]+)`", shown[1]) == engine.chain(engine.TORCHSCRIPT_BF16)


# ---- the built site ----


class Tables(HTMLParser):
    """The text of every table cell of a page, table by table, row by row; and every external resource."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.external: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        source = found.get("src") if tag in ("script", "img") else found.get("href") if tag == "link" else None
        if source and re.match(r"(https?:)?//", source):
            self.external.append(f"<{tag}> {source}")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def read_page(path: Path) -> Tables:
    page = Tables()
    page.feed(path.read_text())
    return page


def markdown_rows(table: str) -> list[list[str]]:
    """A markdown table's rows (header first, the separator left out) as cell texts a browser shows."""
    rows = []
    for line in table.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line):
            rows.append([" ".join(c.replace("`", "").split()) for c in line.strip("|").split(" | ")])
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it: strict, so a broken link, anchor or reference fails here too."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [VENV_BIN / "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_every_page_of_the_nav_is_built_offline(site: Path) -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def sources(nav: list) -> list[str]:
        found = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += sources(value) if isinstance(value, list) else [value]
        return found

    pages = sources(config["nav"])
    assert {"index.md", "getting-started.md", "sdk.md", "benchmarks.md", "reference/client.md"} <= set(pages)
    assert config["theme"]["font"] is False
    assert not {"social", "privacy"} & {next(iter(p)) if isinstance(p, dict) else p for p in config["plugins"]}
    for source in pages:
        html = site / source.replace(".md", ".html")
        assert html.is_file(), source
        page = read_page(html)
        assert not page.external, f"{source} loads {page.external}"
        assert 'class="md-nav' in html.read_text(), f"{source}: no navigation"


def test_the_built_pages_show_the_headline_and_video_the_records_give(site: Path) -> None:
    headline = markdown_rows(report.render_headline(records()))
    video = markdown_rows(report.render_video(records()))
    assert len(headline) >= 3 and len(video) >= 3  # a header and a row per kind at least
    for page, rows in (("index.html", headline), ("performance.html", headline), ("video.html", video)):
        assert rows in read_page(site / page).tables, f"{page} does not show the records' table"


def test_the_benchmarks_page_is_benchmarks_md_rendered_anew(site: Path) -> None:
    document = report.render_document(records())
    assert (ROOT / "BENCHMARKS.md").read_text() == document, "run: make bench-render"
    expected = [markdown_rows(t) for t in re.findall(r"(?:^\|.*\|\n)+", document, re.MULTILINE)]
    shown = read_page(site / "benchmarks.html").tables
    assert shown == expected
    for plot in re.findall(r"\]\(docs/([^)]+\.png)\)", document):
        assert (site / plot).is_file(), plot


def test_the_reference_documents_every_public_name(site: Path) -> None:
    import u2net_client

    text = "".join((site / "reference" / f"{p}.html").read_text() for p in ("client", "aio", "rembg", "options"))
    for name in set(u2net_client.__all__) - {"__version__", "Color", "Options", "AsyncU2NetClient"}:
        assert f'id="u2net_client.{name}"' in text, name
    for name in ("aio.AsyncU2NetClient", "options.Options", "options.Color", "rembg.remove", "rembg.new_session"):
        assert f'id="u2net_client.{name}"' in text, name
    for method in ("mask", "cutout", "mask_many", "cutout_many", "video", "models", "describe", "scale"):
        assert f'id="u2net_client.U2NetClient.{method}"' in text, method
