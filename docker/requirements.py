"""Write each image's dependency list from pyproject.toml, so that installing them needs no project code.

The Dockerfile installs these lists in layers of their own before any source is copied: editing code then
rebuilds one small wheel, not torch. Usage: ``python requirements.py PYPROJECT OUT_DIR``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def image_requirements(pyproject: Path) -> dict[str, list[str]]:
    """Requirement lines per list: the api (core), FAISS for the CPU, what the trainer adds, locust alone, the GPU
    service."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    core, extras = project["dependencies"], project["optional-dependencies"]
    return {
        "api": core,
        "faiss-cpu": extras["cpu"],  # installed on top of the api list unless the build leaves FAISS out
        "train": extras["train"],  # installed on top of the api list
        "load": extras["load"],  # alone: the load test imports none of the project
        # faiss-gpu and Triton (the `gpu` extra); Triton's kernels take torch CUDA tensors.
        "api-gpu": core + extras["gpu"],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: requirements.py PYPROJECT OUT_DIR", file=sys.stderr)
        return 2
    pyproject, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in image_requirements(pyproject).items():
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
