"""Benchmark records: every script appends its rows to one JSON list under benchmarks/results/.

The file is rewritten through a temporary file and ``os.replace``, so a run that dies mid-write leaves the
previous records whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path
from typing import Any


def append_records(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the JSON list at ``path`` (made, with its folder, when missing).

    Under an exclusive lock: runs that finish together (benchmarks/quality.py's threads, parallel processes)
    would otherwise each read the old list and the last write would drop the others' rows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(f".{path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.loads(path.read_text()) if path.is_file() else []
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps([*records, *rows], indent=2) + "\n")
        tmp.replace(path)
