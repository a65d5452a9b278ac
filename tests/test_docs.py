"""Every ```python block of the README and docs/ runs as it stands, in order per file."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_run(page, capsys):
    blocks = BLOCK.findall(page.read_text())
    namespace = {"__name__": "docs_example"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # name the page and block that failed
            raise AssertionError(f"{page.name}, python block {i} failed: {e!r}\n{code}") from e
