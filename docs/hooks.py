"""MkDocs hooks: pages generated from the repository when the site is built, so they cannot drift.

* ``<!-- signxai:methods -->`` in a page becomes the method tables of
  :func:`signxai.torch_signxai.methods.catalog.format_methods`.
* ``benchmarks.md`` is ``benchmarks/README.md`` (with its figure), as the benchmark scripts wrote it.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
MARKER = "<!-- signxai:methods -->"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "benchmarks.md", content=(BENCHMARKS / "README.md").read_text()))
    for figure in sorted(BENCHMARKS.glob("*.png")):
        files.append(File.generated(config, figure.name, abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        from signxai.torch_signxai.methods import format_methods

        markdown = markdown.replace(MARKER, format_methods(markdown=True))
    return markdown
