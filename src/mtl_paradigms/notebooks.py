"""Execute parameterised notebooks with papermill and render them to HTML, atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtl_paradigms.io import atomic_path, write_text


def execute_notebook(
    notebook: str | os.PathLike[str],
    output: str | os.PathLike[str],
    html: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    cwd: str | os.PathLike[str] | None = None,
    kernel_name: str = "python3",
) -> None:
    """Run ``notebook`` with ``parameters`` injected after its ``parameters`` cell.

    The executed notebook and its HTML rendering appear only when execution succeeded;
    a failing cell raises ``papermill.PapermillExecutionError`` naming the cell.
    """
    import nbconvert
    import nbformat
    import papermill

    source = Path(notebook)
    if not source.is_file():
        raise FileNotFoundError(f"notebook not found: {source}")
    nb = nbformat.read(source, as_version=4)
    if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(f"{source}: no cell tagged 'parameters' (papermill needs one)")
    with atomic_path(output) as tmp:
        papermill.execute_notebook(
            str(source),
            str(tmp),
            parameters=dict(parameters),
            kernel_name=kernel_name,
            cwd=str(cwd) if cwd is not None else None,
            progress_bar=False,
        )
        executed = nbformat.read(tmp, as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(executed)
    write_text(html, body)
