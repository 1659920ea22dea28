"""Benchmark records: every script appends its rows to one JSON list under benchmarks/results/.

The file is rewritten through a temporary file and ``os.replace``, so a run that dies mid-write leaves the
previous records whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append_records(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSON list at ``path`` (made, with its folder, when missing)."""
    records = json.loads(path.read_text()) if path.is_file() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([*records, *rows], indent=2) + "\n")
    tmp.replace(path)
