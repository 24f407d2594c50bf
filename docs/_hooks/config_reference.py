"""MkDocs hook: the configuration reference, generated from the config schema.

``docs/configuration.md`` holds the marker ``<!-- config-reference -->``; this hook replaces it
with tables of every key of ``workflow/schemas/config.schema.yaml``: its dotted path, type,
description and default. The default is the schema's ``default`` where it has one, otherwise
the value in ``workflow/config/default.yaml``. Keys without a description get an empty cell.
Blocks that the schema reuses through ``$ref`` (``train_settings``, ``dataset``,
``cluster_jobs``) get one table each, and the keys that use them link there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULTS = ROOT / "workflow" / "config" / "default.yaml"
MARKER = "<!-- config-reference -->"
MAX_DEFAULT = 70  # characters of a default shown in a cell
MAX_ENUM = 8  # longer enums (the method names) are abbreviated
MISSING = object()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render(SCHEMA, DEFAULTS))


def render(schema_path: Path, defaults_path: Path) -> str:
    schema = yaml.safe_load(schema_path.read_text())
    defaults = yaml.safe_load(defaults_path.read_text()) if defaults_path.is_file() else {}
    defs = schema.get("$defs", {})
    blocks = {name for name, node in defs.items() if "properties" in node}
    out: list[str] = []
    for section, node in schema.get("properties", {}).items():
        out.append(f"### `{section}`\n")
        description = node.get("description")
        if description:
            out.append(_text(description) + "\n")
        rows: list[tuple[str, str, str, str]] = []
        value = defaults.get(section, MISSING)
        has_children = "properties" in _resolve(node, defs, blocks)
        _rows(node, section, defs, blocks, value, rows, top=has_children)
        out.append(_table(rows))
    out.append("### Shared blocks\n")
    out.append("Blocks that several sections reuse; their defaults are those of the section.\n")
    for name in sorted(blocks):
        out.append(f"#### `{name}` {{#block-{name}}}\n")
        rows = []
        _rows(defs[name], "", defs, blocks, MISSING, rows, top=True)
        out.append(_table(rows))
    return "\n".join(out)


def _rows(
    node: dict[str, Any],
    path: str,
    defs: dict[str, Any],
    blocks: set[str],
    default: Any,
    rows: list[tuple[str, str, str, str]],
    top: bool = False,
) -> None:
    """Append one row for ``node`` (unless ``top``) and rows for its children."""
    node = _resolve(node, defs, blocks)
    if not top:
        rows.append(
            (
                path,
                _type(node, defs, blocks),
                _text(node.get("description", "")),
                _default(node, default),
            )
        )
    block = node.get("$ref", "").rsplit("/", 1)[-1]
    if block in blocks:
        return
    for key, child in node.get("properties", {}).items():
        value = default.get(key, MISSING) if isinstance(default, dict) else MISSING
        _rows(child, f"{path}.{key}" if path else key, defs, blocks, value, rows)
    items = node.get("items")
    if isinstance(items, dict):
        items = _resolve(items, defs, blocks)
        if "properties" in items:
            for key, child in items["properties"].items():
                _rows(child, f"{path}[].{key}", defs, blocks, MISSING, rows)


def _resolve(node: dict[str, Any], defs: dict[str, Any], blocks: set[str]) -> dict[str, Any]:
    """Inline a ``$ref`` to a non-block definition; local keys (description) win."""
    ref = node.get("$ref")
    if not ref:
        return node
    name = ref.rsplit("/", 1)[-1]
    if name in blocks:
        return node
    merged = dict(_resolve(defs[name], defs, blocks))
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return merged


def _type(node: dict[str, Any], defs: dict[str, Any], blocks: set[str]) -> str:
    ref = node.get("$ref", "").rsplit("/", 1)[-1]
    if ref in blocks:
        return f"[`{ref}`](#block-{ref})"
    if "enum" in node and len(node["enum"]) > MAX_ENUM:
        values = node["enum"]
        return f"one of {len(values)} names: `{values[0]}`, `{values[1]}` … `{values[-1]}`"
    if "enum" in node:
        return " \\| ".join(f"`{_flow(v)}`" for v in node["enum"])
    if "const" in node:
        return f"`{_flow(node['const'])}`"
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " or ".join(_type(_resolve(n, defs, blocks), defs, blocks) for n in node[key])
    kind = node.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    text = " or ".join(k for k in kinds if k)
    bounds = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            bounds.append(f"{sign} {node[key]}")
    if bounds:
        text += f" ({', '.join(bounds)})"
    items = node.get("items")
    if "array" in kinds and isinstance(items, dict):
        inner = _type(_resolve(items, defs, blocks), defs, blocks)
        if inner and "properties" not in _resolve(items, defs, blocks):
            text += f" of {inner}"
    return text


def _default(node: dict[str, Any], value: Any) -> str:
    if "default" in node:
        value = node["default"]
    if value is MISSING or (isinstance(value, dict) and "properties" in node):
        return ""
    text = _flow(value)
    if len(text) > MAX_DEFAULT:
        text = text[: MAX_DEFAULT - 1] + "…"
    return f"`{text}`"


def _flow(value: Any) -> str:
    """A value as in YAML flow syntax, close to what --config takes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value, ensure_ascii=False).replace("Infinity", ".inf")


def _text(text: str) -> str:
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    if not rows:
        return ""
    lines = ["| key | type | description | default |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {kind} | {text} | {default} |" for key, kind, text, default in rows]
    return "\n".join(lines) + "\n"
