"""A conversation of the dock, exported as Markdown (images in a folder beside it) or one HTML file (images
inline), each turn with its question, answer, what the model saw and the coordinates of that view."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List


@dataclass
class Turn:
    """One question and its answer. `image_png`: what the model saw with its boxes drawn (None for a
    follow-up about the same image); view fields as the objects layer's provenance holds them."""

    question: str
    task: str
    answer: str = ""
    model: str = ""
    family: str = ""
    engine: str = ""
    time: str = ""
    image_png: bytes = b""
    view_extent: str = ""
    view_crs: str = ""
    view_rotation: float = 0.0
    image_size: str = ""
    notes: List[str] = field(default_factory=list)

    def view_line(self) -> str:
        return (f"view: extent {self.view_extent} ({self.view_crs}), rotation {self.view_rotation:g}°, "
                f"image {self.image_size} px; {self.model} ({self.family}) at {self.engine}, {self.time}")


def markdown_text(text: str) -> str:
    """`text` as one line of literal Markdown inside a line (after a heading's or list item's marker): line breaks
    become spaces and the characters that start emphasis, code, links, HTML, entities, tables or a heading's closing
    sequence are backslash-escaped (CommonMark 0.31, "Backslash escapes"), so a question's `*`, `#` or `<p>` is
    text."""
    return re.sub(r"([\\`*_\[\]<>|~&#])", r"\\\1", " ".join(text.split()))


def markdown_block(text: str) -> List[str]:
    """`text` as a fenced code block (CommonMark 0.31, "Fenced code blocks"): a model's answer exactly as it was
    written, its box syntax and tags (`<p>`, `<ref>`, `{<40><40>...}`) shown, not read as HTML. The fence is longer
    than any run of backticks in the text."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return [f"{fence}text", text, fence]


def to_markdown(turns: List[Turn], path: Path) -> Path:
    """Write `path` (.md) and its images into `<stem>_images/`; returns the path written. Questions and notes
    are literal text (`markdown_text`), each answer the model's text as it came (`markdown_block`)."""
    path = Path(path)
    images = path.with_name(f"{path.stem}_images")
    lines = ["# GeoVLM conversation", ""]
    for n, turn in enumerate(turns, 1):
        lines += [f"## {n}. {markdown_text(turn.task)}: {markdown_text(turn.question)}", ""]
        if turn.image_png:
            images.mkdir(parents=True, exist_ok=True)
            (images / f"turn{n}.png").write_bytes(turn.image_png)
            lines += [f"![what the model saw]({images.name}/turn{n}.png)", ""]
        lines += [*markdown_block(turn.answer), "", *[f"- {markdown_text(note)}" for note in turn.notes],
                  f"*{markdown_text(turn.view_line())}*", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def to_html(turns: List[Turn], path: Path) -> Path:
    """Write one self-contained HTML file (images as data URIs); returns the path written."""
    body = []
    for n, turn in enumerate(turns, 1):
        body.append(f"<h2>{n}. {html.escape(turn.task)}: {html.escape(turn.question)}</h2>")
        if turn.image_png:
            data = base64.b64encode(turn.image_png).decode("ascii")
            body.append(f'<img alt="what the model saw" src="data:image/png;base64,{data}" style="max-width:100%">')
        body.append(f"<p>{html.escape(turn.answer)}</p>")
        body += [f"<li>{html.escape(note)}</li>" for note in turn.notes]
        body.append(f"<p><small>{html.escape(turn.view_line())}</small></p>")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>GeoVLM conversation</title></head>"
            f"<body><h1>GeoVLM conversation</h1>{''.join(body)}</body></html>")
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
