"""Every Python sample of README.md and docs/*.md runs as written.

The ```python blocks of one document run in order, in one namespace (a
page's later samples build on its earlier ones), against a throwaway
database of their own that ``EVENTSTORE_DSN`` names, from a scratch working
directory. A block runs unless the line just before it says, visibly in the
rendered page, why not: ``*Not run by tests/test_docs.py: <reason>.*``.
Tracebacks name the document and its line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from eventstore import EventStore
from tests.support.database import deployed_database

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)[^\n]*$")
_SKIP = re.compile(r"^\*?Not run by tests/test_docs\.py:(.*?)\*?$")


class Sample(NamedTuple):
    line: int  # of the sample's first line of code, 1-based
    code: str
    skip: str | None  # the reason given, if it is not run


def python_samples(text: str, name: str) -> list[Sample]:
    """The ```python blocks of a Markdown text, in order."""
    samples: list[Sample] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{name}:{i + 1}: a code block that is never closed")
        if language in ("python", "py"):
            previous = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            marked = _SKIP.match(previous)
            reason = marked.group(1).strip().rstrip(".").strip() if marked else None
            if marked and not reason:
                raise AssertionError(f"{name}:{i + 1}: a skipped sample must say why")
            samples.append(Sample(i + 2, "\n".join(lines[i + 1 : end]) + "\n", reason))
        i = end + 1
    return samples


def run_samples(path: Path) -> dict[str, Any]:
    """Run a document's samples in one namespace; returns it."""
    name = str(path.relative_to(REPO))
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    try:
        for sample in python_samples(path.read_text(encoding="utf-8"), name):
            if sample.skip is not None:
                continue
            # Padded so that the code's line numbers are the document's.
            code = compile("\n" * (sample.line - 1) + sample.code, name, "exec")
            exec(code, namespace)  # noqa: S102 (the repository's own documentation)
    finally:
        for value in namespace.values():
            if isinstance(value, EventStore):
                value.close()
    return namespace


@pytest.mark.parametrize(
    "path",
    [d for d in DOCUMENTS if python_samples(d.read_text(encoding="utf-8"), d.name)],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_the_documents_samples_run_as_written(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with deployed_database("utcp_docs") as dsn:
        monkeypatch.setenv("EVENTSTORE_DSN", dsn)
        monkeypatch.chdir(tmp_path)
        run_samples(path)


def test_the_readme_has_samples() -> None:
    assert python_samples((REPO / "README.md").read_text(encoding="utf-8"), "README.md")


def test_samples_are_found_and_a_skip_needs_a_visible_reason() -> None:
    text = "\n".join(
        [
            "Intro.",
            "```python",
            "x = 1",
            "```",
            "",
            "*Not run by tests/test_docs.py: it needs a broker.*",
            "",
            "```python",
            "connect_to_broker()",
            "```",
            "````sh",
            "```python",
            "````",
            "```py",
            "y = x + 1",
            "```",
        ]
    )
    found = python_samples(text, "t.md")
    assert found == [
        Sample(3, "x = 1\n", None),
        Sample(9, "connect_to_broker()\n", "it needs a broker"),
        Sample(15, "y = x + 1\n", None),
    ]
    with pytest.raises(AssertionError, match="must say why"):
        python_samples("*Not run by tests/test_docs.py: .*\n```python\nz()\n```\n", "t.md")
    with pytest.raises(AssertionError, match="never closed"):
        python_samples("```python\nz()\n", "t.md")
