"""mkdocs hook: pages kept outside docs/ (symlinked into it) keep working links in the site.

experiments/README.md and REPRODUCTION.md are read on GitHub too, so their links are relative to
their own place in the repository (``../docs/data.md``, ``docs/certified.md``). In the site they
are docs/experiments.md and docs/reproduction.md: each relative ``.md`` link of such a page is
resolved against the file's real place and re-pointed at the site page that holds its target.
"""

from __future__ import annotations

import os
import pathlib
import re

LINK = re.compile(r"\]\(([^)#\s]+\.md)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    real = pathlib.Path(page.file.abs_src_path).resolve()
    if real.parent == pathlib.Path(config["docs_dir"]).resolve():
        return markdown  # a page of docs/ itself: its links are already the site's
    pages = {pathlib.Path(f.abs_src_path).resolve(): f.src_uri for f in files.documentation_pages()}
    here = os.path.dirname(page.file.src_uri) or "."

    def repoint(m: re.Match) -> str:
        target = pages.get((real.parent / m.group(1)).resolve())
        if target is None:
            return m.group(0)  # left for mkdocs to report
        return f"]({os.path.relpath(target, here)}{m.group(2) or ''})"

    return LINK.sub(repoint, markdown)
