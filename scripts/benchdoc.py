"""Shared by the bench_*.py scripts: JSON output and one section each in docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
import re
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def command_line() -> str:
    """The command that produced the figures, as a user would retype it."""
    return "python " + " ".join(shlex.quote(a) for a in [f"scripts/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def update_section(name: str, markdown: str) -> Path:
    """Replace (or append) the block between ``<!-- bench:name -->`` markers."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"{begin}\n{markdown.strip()}\n\n_Command:_ `{command_line()}` — {machine()}, {stamp}.\n{end}"
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_suffix(".md.part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(DOC)
    return DOC


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"command": command_line(), "machine": machine(), **data}
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
    tmp.replace(path)
    return path
