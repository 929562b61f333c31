"""Model cards as HTML: the small Markdown the compiler writes (headings, lists, tables, code,
emphasis, links, paragraphs), sanitised by construction.

Every line is HTML-escaped first and only then given structure, so a card can never inject
markup or script; links keep only ``http(s)://``, ``/`` and ``#`` targets. Headings move down
two levels (``#`` becomes ``h3``): the page has its own ``h1`` and section ``h2``. Anything this
subset does not know is shown as text, never dropped.
"""

from __future__ import annotations

import re

from markupsafe import Markup, escape

_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_SAFE_HREF = re.compile(r"^(https?://|/|#)")
_ITEM = re.compile(r"^\s*([-*]|\d+\.)\s+")


def _inline(text: str) -> str:
    """``text`` is already escaped: code spans, bold, italics, safe links."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append(f"<code>{p[1:-1]}</code>")
            continue
        p = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", p)
        p = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", p)
        p = _LINK.sub(
            lambda m: (
                f'<a href="{m.group(2)}" rel="nofollow noopener">{m.group(1)}</a>'
                if _SAFE_HREF.match(m.group(2))
                else m.group(0)
            ),
            p,
        )
        out.append(p)
    return "".join(out)


def _row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def render(source: str) -> Markup:
    lines = [str(escape(line)) for line in source.replace("\r\n", "\n").split("\n")]
    html: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            html.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            html.append("<pre><code>" + "\n".join(lines[i + 1 : j]) + "</code></pre>")
            i = j + 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            flush()
            level = min(6, len(heading.group(1)) + 2)
            html.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif re.match(r"^[-*]\s+", stripped) or re.match(r"^\d+\.\s+", stripped):
            flush()
            ordered = bool(re.match(r"^\d+\.", stripped))
            items = []
            while i < len(lines) and _ITEM.match(lines[i]):
                items.append("<li>" + _inline(_ITEM.sub("", lines[i])) + "</li>")
                i += 1
            tag = "ol" if ordered else "ul"
            html.append(f"<{tag}>{''.join(items)}</{tag}>")
            continue
        elif stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?[\s:|-]+\|?$", lines[i + 1].strip()):
            flush()
            head = "".join(f'<th scope="col">{_inline(c)}</th>' for c in _row(line))
            i += 2
            body = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _row(lines[i])) + "</tr>")
                i += 1
            html.append(
                f'<div class="table-wrap"><table class="compact"><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table></div>"
            )
            continue
        elif not stripped:
            flush()
        else:
            para.append(stripped)
        i += 1
    flush()
    return Markup("\n".join(html))
