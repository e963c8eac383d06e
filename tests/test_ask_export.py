"""The dock's Markdown export read back as a Markdown viewer reads it (markdown-it-py, CommonMark): each question
whole in its heading, each answer exactly as the model wrote it, box syntax and tags included."""
from markdown_it import MarkdownIt

from geovlm.plugin.ask_export import Turn, to_markdown

ANSWERS = [
    "There is a <p>car</p> {<40><40><60><60>|<90>} in the centre.",  # GeoChat
    "<ref>building</ref><rbox>({<25.00><30.00><10.00><20.00>|<90>})</rbox> <rel>adjacent</rel> "
    "<ref>road</ref><rbox>({<60.00><70.00><5.00><40.00>|<90>})</rbox>.",  # SkySenseGPT
    "<|object_ref_start|>car<|object_ref_end|><|box_start|>(412,305),(498,377)<|box_end|> and ``` ticks",  # Qwen2-VL
    "**not bold** _nor this_ & [no link](x) # not a heading",
]


def _render(path) -> str:
    return MarkdownIt("commonmark").render(path.read_text(encoding="utf-8"))


def _tokens(path):
    return MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))


def test_markdown_export_keeps_each_question_and_answer_as_written(tmp_path):
    question = "How many *cars* are <b>there</b>?\nAnd the #2 road_side [x](y) #"
    turns = [Turn(question=question, task="ask", answer=a, notes=["features go to /x/project_geovlm.gpkg"],
                  view_crs="EPSG:3857") for a in ANSWERS]
    path = to_markdown(turns, tmp_path / "talk.md")
    tokens = _tokens(path)
    fences = [t.content for t in tokens if t.type == "fence"]
    assert fences == [a + "\n" for a in ANSWERS]
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]
    assert len(headings) == len(ANSWERS)
    inline = MarkdownIt("commonmark").parseInline(headings[0])[0].children
    assert "".join(t.content for t in inline if t.type == "text") == "1. ask: " + " ".join(question.split())
    assert all(t.type == "text" for t in inline)  # no emphasis, link or HTML made of the question
    html = _render(path)
    assert "<b>" not in html and "<p>car" not in html and "project_geovlm.gpkg" in html
