"""Every ```python block of README.md and docs/*.md runs, as written, at a small size.

A block that cannot run here says why on the line before it (``<!-- norun: REASON -->``: it
downloads data, trains for minutes, or needs a converted release); there are few. The blocks of
one page run in order in one namespace, as a reader would type them. The docs use a few names
for the reader's own inputs, which this test provides: ``images`` [4, 32, 32, 3] in [0, 1] and
``labels`` [4] (the first embedded CIFAR-10 test images), ``image``, ``label`` (the first of
them), ``model`` (an untrained Pico/16 DiffViT), ``model_fn`` (its attack function), ``key`` and
``layer`` (0). The README's block gets none of them: it runs on its own.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- norun: [^\n]*-->\n)?```python\n(.*?)```", re.S)
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


def blocks(page: str) -> list[tuple[str | None, str]]:
    """(the norun reason or None, code) of every Python block of ``page``."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer((ROOT / page).read_text())]


RUNNABLE = [p for p in PAGES if any(reason is None for reason, _ in blocks(p))]


def reader_inputs() -> dict:
    import jax
    from flax import nnx

    import diffjax as dj
    from diffjax import attacks
    from diffjax.data import embedded_sample

    test = embedded_sample("test").take(4)
    model = dj.ViT(dj.variant("Pico/16", attention="diff"), rngs=nnx.Rngs(0))
    images, labels = test.images / 255.0, test.labels
    return dict(images=images, labels=labels, image=images[0], label=int(labels[0]),
                model=model, model_fn=attacks.model_function(model), key=jax.random.key(0),
                layer=0, wrt="image")  # fmt: skip


def test_norun_blocks_are_few_and_say_why():
    marked = [(p, r) for p in PAGES for r, _ in blocks(p) if r is not None]
    total = sum(len(blocks(p)) for p in PAGES)
    assert all(len(r) > len("<!-- norun:  -->\n") for _, r in marked)
    assert len(marked) <= total // 2, marked
    assert all(r is None for r, _ in blocks("README.md"))  # the README's example always runs


@pytest.mark.parametrize("page", RUNNABLE)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that save files write them here
    namespace = {} if page == "README.md" else reader_inputs()
    for i, (reason, code) in enumerate(blocks(page)):
        if reason is None:
            exec(compile(code, f"{page}, Python block {i + 1}", "exec"), namespace)
