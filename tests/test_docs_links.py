"""The README and the docs pages hold together: links resolve, commands take the flags shown.

- every relative link in README.md, docs/*.md and benchmarks/README.md points at a file or
  folder that exists, and its ``#anchor`` (if any) at a heading of the target page (GitHub's
  anchor rule: lower case, punctuation dropped, spaces to hyphens, ``-1``, ``-2`` for repeats);
- every ``--flag`` of a ``python -m tfmarket.…`` command in their code blocks and inline code is
  one that command's ``--help`` lists (``--help`` imports no TensorFlow, so this is fast).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", REPO / "benchmarks" / "README.md",
                *(REPO / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def _strip_fences(text: str) -> str:
    """The text with fenced code blocks blanked out (line count kept)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    return INLINE_CODE.sub(lambda m: "\n" * m.group(0).count("\n"), _strip_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    text = page.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    found = set(HTML_ANCHOR.findall(text))
    for _, heading in HEADING.findall(_strip_fences(text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def _links(page: Path) -> list[tuple[int, str]]:
    text = _prose(page.read_text(encoding="utf-8"))
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(text)]


def broken_links(page: Path) -> list[str]:
    problems = []
    for line, target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(REPO)}:{line}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with this anchor in {dest.name}")
    return problems


def test_slug_follows_github():
    assert slug("Set-up: one line per kind of machine") == "set-up-one-line-per-kind-of-machine"
    assert slug("Attributes and the model's heads") == "attributes-and-the-models-heads"
    assert slug("`train_step.py`: training-step images/s") == "train_steppy-training-step-imagess"
    assert slug("Flat / IVF (exact)") == "flat--ivf-exact"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    assert broken_links(page) == []


# --- commands ---------------------------------------------------------------------------------

COMMAND = re.compile(r"-m\s+(tfmarket(?:\.\w+)+)\b(.*)")


def _command_lines(page: Path) -> list[str]:
    """Lines of fenced code (continuations joined) and inline code spans naming a command."""
    text = page.read_text(encoding="utf-8")
    lines = []
    for block in FENCE.finditer(text):
        body = re.sub(r"\\\n", " ", block.group(0))
        lines += body.splitlines()[1:-1]
    for span in INLINE_CODE.finditer(_strip_fences(text)):
        lines.append(" ".join(span.group(2).split()))
    return [seg for line in lines for seg in line.split("&&") if COMMAND.search(seg)]


def _tokens(rest: str) -> list[str]:
    try:
        return shlex.split(rest, comments=True)
    except ValueError:  # an unbalanced quote in an inline fragment
        return rest.split()


@cache
def help_text(module: str, sub: str | None) -> str:
    args = [sys.executable, "-m", module, *([sub] if sub else []), "--help"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args[1:])} failed:\n{done.stderr[-2000:]}"
    return done.stdout


def _subcommands(module: str) -> set[str]:
    usage = help_text(module, None).split("\n\n", 1)[0]
    match = re.search(r"\{([\w,-]+)\}", usage)
    return set(match.group(1).split(",")) if match else set()


def unknown_flags(page: Path) -> list[str]:
    problems = []
    for line in _command_lines(page):
        module, rest = COMMAND.search(line).groups()
        tokens = _tokens(rest)
        sub = None
        if tokens and not tokens[0].startswith("-") and tokens[0] in _subcommands(module):
            sub = tokens[0]
        text = help_text(module, sub)
        for token in tokens:
            flag = token.strip("[]").split("=", 1)[0]
            if not re.fullmatch(r"--[\w-]+", flag) or flag == "--help":
                continue
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                name = " ".join(filter(None, [module, sub]))
                problems.append(f"{page.relative_to(REPO)}: {name}: {flag} is not in --help")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_command_flags_exist(page):
    assert unknown_flags(page) == []
