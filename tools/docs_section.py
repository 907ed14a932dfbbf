"""Rewrite a benchmark tool's own section of a markdown page (``docs/benchmarks.md``).

A page marks each tool's section with two HTML comments, which markdown viewers do not show:

    <!-- begin bench_text_to_3d (rewritten by tools/bench_text_to_3d.py --docs docs/benchmarks.md) -->
    ...the tool's last tables...
    <!-- end bench_text_to_3d -->

:func:`replace_section` puts a new body between them and leaves everything else on the page as it was. A tool
given ``--docs PAGE`` calls it with the markdown it writes to ``--out`` (less that file's own title).
"""

from __future__ import annotations

import re
from pathlib import Path


def _markers(name: str) -> tuple[re.Pattern, re.Pattern]:
    return (re.compile(rf"^<!-- begin {re.escape(name)}\b[^\n]*-->\n", re.M),
            re.compile(rf"^<!-- end {re.escape(name)} -->$", re.M))


def replace_section(page: str | Path, name: str, body: str) -> None:
    """Replace what lies between ``<!-- begin NAME ... -->`` and ``<!-- end NAME -->`` in ``page`` with ``body``
    (a leading ``# title`` line of the tool's own file dropped). A page without both markers, in that order, is
    an error and is left untouched."""
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    begin_re, end_re = _markers(name)
    begin, end = begin_re.search(text), end_re.search(text)
    if begin is None or end is None or end.start() < begin.end():
        raise SystemExit(f"{page}: no section marked <!-- begin {name} ... --> ... <!-- end {name} --> to rewrite")
    lines = body.strip("\n").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    new = "\n".join(lines).strip("\n")
    page.write_text(text[: begin.end()] + "\n" + new + "\n\n" + text[end.start():], encoding="utf-8")
