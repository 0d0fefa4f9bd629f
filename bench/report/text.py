"""Escaping for every string that reaches a report: Markdown, HTML, CSV, file names, plots.

Concept names, prompts and config strings come from user files; in a report they must render as
the text they are (HTML tags, Markdown table pipes, newlines, backticks and spreadsheet formulas
included), never as markup or a broken table.
"""

from __future__ import annotations

import hashlib
import html
import re
from typing import Any
from urllib.parse import quote

# what changes meaning mid-line or in a table cell; "_" only where it could open or close emphasis
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,80}")


def _one_line(text: str) -> str:
    """Newlines and other control characters become visible escapes (``\\n``), one line kept."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def md_text(value: Any) -> str:
    """Inline Markdown text (a table cell, a value mid-line): markup characters backslash-escaped,
    HTML as entities, one line."""
    text = _one_line(str(value))
    text = _MD_SPECIAL.sub(lambda m: "\\" + m.group(), text)
    return text.replace("&", "&amp;").replace("<", "&lt;")


def md_code(value: Any) -> str:
    """An inline code span holding ``value`` literally (a fence longer than any backtick run inside)."""
    text = _one_line(str(value))
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html_text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def csv_cell(value: Any) -> Any:
    """A string a spreadsheet will not run as a formula (leading ``'``); other values unchanged.
    Quoting of commas, quotes and newlines is the CSV writer's job."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_safe(df: Any) -> Any:
    """A copy of a DataFrame whose text cells are ``csv_cell``-safe."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype).startswith("str"):
            out[col] = out[col].map(csv_cell)
    return out


def file_stem(name: str) -> str:
    """``name`` when it is a plain file-name stem; else a slug plus a hash (no path, markup or control
    characters can reach the file system)."""
    if _SAFE_NAME.fullmatch(name):
        return name
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "concept"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def md_link(path: str) -> str:
    """A relative link target with spaces and specials percent-encoded."""
    return quote(path, safe="/._-")
