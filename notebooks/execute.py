"""Run the tour top to bottom and store its outputs in the notebook, so it reads on GitHub.

    PYTHONPATH=. .venv/bin/python notebooks/execute.py [notebooks/rayfun_tour.ipynb]

The kernel starts in the repository's root (the notebook imports ``examples.fraud``).
"""

from __future__ import annotations

import os
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    began = time.monotonic()
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    for cell in nb.cells:  # timings and ids of this run are noise in a diff
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    print(f"{path}: executed in {time.monotonic() - began:.0f} s, {os.path.getsize(path) // 1024} KiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "notebooks", "rayfun_tour.ipynb"))
