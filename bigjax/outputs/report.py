"""`report.html` and `report.md`: one page a person can open or share about a run.

The page is built from plain sections (tables, text, pictures) rendered twice: to Markdown,
which links the PNGs beside it, and to HTML, which embeds them (base64) so the single file
opens anywhere with no network and no other files.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from typing import Any, Mapping, Sequence


@dataclasses.dataclass
class Table:
  header: Sequence[str]
  rows: Sequence[Sequence[Any]]


@dataclasses.dataclass
class Text:
  text: str
  preformatted: bool = False


@dataclasses.dataclass
class Picture:
  path: str     # a PNG beside the report
  caption: str


Section = tuple[str, Sequence[Table | Text | Picture]]


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:,.0f}"
  if isinstance(value, int) and not isinstance(value, bool):
    return f"{value:,}"
  return str(value)


def to_markdown(title: str, sections: Sequence[Section]) -> str:
  lines = [f"# {title}", ""]
  for heading, blocks in sections:
    lines += [f"## {heading}", ""]
    for block in blocks:
      if isinstance(block, Table):
        lines.append("| " + " | ".join(map(str, block.header)) + " |")
        lines.append("|" + "---|" * len(block.header))
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in block.rows]
      elif isinstance(block, Text):
        lines += (["```", block.text, "```"] if block.preformatted else [block.text])
      else:
        lines.append(f"![{block.caption}]({os.path.basename(block.path)})")
      lines.append("")
  return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{
text-align:left}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:85%}
img{max-width:100%}figcaption{color:#555;font-size:90%}"""


def to_html(title: str, sections: Sequence[Section]) -> str:
  parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
  for heading, blocks in sections:
    parts.append(f"<h2>{html.escape(heading)}</h2>")
    for block in blocks:
      if isinstance(block, Table):
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>"
                                             for h in block.header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row)
                  + "</tr>" for row in block.rows]
        parts.append("</table>")
      elif isinstance(block, Text):
        parts.append(f"<pre>{html.escape(block.text)}</pre>" if block.preformatted
                     else f"<p>{html.escape(block.text)}</p>")
      else:
        with open(block.path, "rb") as f:
          data = base64.b64encode(f.read()).decode()
        parts.append(f'<figure><img alt="{html.escape(block.caption)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>'
                     f"{html.escape(block.caption)}</figcaption></figure>")
  parts.append("</body></html>")
  return "\n".join(parts)


def metrics_table(results: Mapping[str, Mapping[str, Any]]) -> Table:
  """One row per scalar metric, one column per split."""
  splits = list(results)
  names = list(dict.fromkeys(k for s in splits for k, v in results[s].items()
                             if isinstance(v, (int, float))))
  return Table(["metric", *splits],
               [[n, *(results[s].get(n, "") for s in splits)] for n in names])


def per_class_table(values: Mapping[str, Any], class_names: Sequence[str]) -> Table | None:
  keys = [k for k in ("precision", "recall", "f1") if f"{k}_per_class" in values]
  if not keys:
    return None
  support = values.get("support_per_class")
  if support is None and "confusion_matrix" in values:
    support = [sum(row) for row in values["confusion_matrix"]]
  header = ["class", *keys] + (["support"] if support is not None else [])
  rows = []
  for i, name in enumerate(class_names):
    row = [str(name) if str(name) == str(i) else f"{i} {name}"] + [values[f"{k}_per_class"][i] for k in keys]
    rows.append(row + ([int(support[i])] if support is not None else []))
  return Table(header, rows)


def summary_table(summary: Mapping[str, Any]) -> Table:
  def shape(s):
    return "x".join(map(str, s)) if s else "-"
  return Table(["layer", "type", "input", "output", "weights", "biases", "non-trainable",
                "FLOPs/example"],
               [[l["path"], l["type"], shape(l["input_shape"]), shape(l["output_shape"]),
                 l["weights"], l["biases"], l["non_trainable"], l["flops_per_example"]]
                for l in summary["layers"]])


def write(workdir: str, title: str, sections: Sequence[Section]) -> tuple[str, str]:
  """Writes report.md and report.html (atomically) into `workdir`; returns their paths."""
  paths = []
  for name, text in (("report.md", to_markdown(title, sections)),
                     ("report.html", to_html(title, sections))):
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
    paths.append(path)
  return paths[0], paths[1]


def config_text(config_json: str) -> Text:
  return Text(json.dumps(json.loads(config_json), indent=2, sort_keys=True), preformatted=True)
