"""Generated blocks in a docs page: the text between ``<!-- BEGIN generated: NAME -->`` and
``<!-- END generated: NAME -->`` is written by a script from published records, never by
hand (analysis/publish.py, analysis/pool_aware_long.py; tests/test_published.py checks it).
Writing a block also rewrites the page's readings, so the two never disagree."""
from __future__ import annotations

import re
from pathlib import Path


def render(name: str, body: str) -> str:
    """The block NAME holding ``body``, markers included."""
    return f"<!-- BEGIN generated: {name} -->\n{body}\n<!-- END generated: {name} -->"


def write(page: Path, name: str, body: str) -> None:
    """Replace the block NAME in ``page`` (it must hold the two markers) with ``body``, then
    rewrite the page's readings (analysis/readings.py: the numbers its sentences cite), which
    the new records may change. A reading the published data cannot give is one line on
    stderr and exit 2, the page as the block left it."""
    import sys

    import readings  # beside this file, as every script that writes blocks is

    text = page.read_text()
    pattern = re.compile(rf"<!-- BEGIN generated: {re.escape(name)} -->.*?<!-- END generated: {re.escape(name)} -->", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{page} has no block <!-- BEGIN generated: {name} --> ... <!-- END generated: {name} -->")
    text = pattern.sub(lambda _: render(name, body), text)
    try:
        text = readings.rewrite(text)
    except ValueError as e:
        page.write_text(text)
        print(f"{page}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    page.write_text(text)
