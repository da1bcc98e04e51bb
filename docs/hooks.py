"""MkDocs hooks: pages generated from the repository when the site is built, so they cannot drift.

* ``<!-- signxai:methods -->`` in a page becomes the method tables of
  :func:`signxai.torch_signxai.methods.catalog.format_methods`.
* ``benchmarks.md`` is ``benchmarks/README.md`` (with its figure), as the benchmark scripts wrote it.
* The docstrings' cross-reference roles (``:func:`name```, ``:class:`~a.b.C```, ...), which
  mkdocstrings renders as text, become code: a link where the target is a full dotted path the
  site documents, plain code otherwise (a relative target such as ``.padding``).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
MARKER = "<!-- signxai:methods -->"
#: a role as the numpy docstring renders it: ``:func:<code>~a.b</code>``
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):<code>(~?)([^<]+)</code>")


def on_files(files: Files, config) -> Files:
    """Add the generated benchmark page and its figures."""
    files.append(File.generated(config, "benchmarks.md", content=(BENCHMARKS / "README.md").read_text()))
    for figure in sorted(BENCHMARKS.glob("*.png")):
        files.append(File.generated(config, figure.name, abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Put the method tables where a page has the marker."""
    if MARKER in markdown:
        from signxai.torch_signxai.methods import format_methods

        markdown = markdown.replace(MARKER, format_methods(markdown=True))
    return markdown


def _role(match: re.Match[str]) -> str:
    """One role as code: Sphinx's ``~`` shows the last name only, a leading ``.`` is dropped."""
    short, target = match.group(1), html.unescape(match.group(2))
    shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
    code = f"<code>{html.escape(shown)}</code>"
    if target.startswith(".") or "." not in target:
        return code
    return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'


def on_page_content(content: str, page, config, files) -> str:
    """Replace the rendered cross-reference roles (the autorefs plugin resolves the links)."""
    return ROLE.sub(_role, content)
