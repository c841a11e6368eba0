"""Print which of the toolkit's packages and scripts import which (the table in docs/DESIGN.md).

    python scripts/import_graph.py

Reads the import statements of every module (those inside functions too) without importing
anything. A target is marked "lazy" when every import of it in that package sits inside a
function, so loading the package does not load the target.
"""
from __future__ import annotations

import ast
import os
import sys
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["train.py", "render.py", "metrics.py", "remote_viewer.py", "local_viewer.py"]
PACKAGES = ["training", "viewer", "gaussian_renderer", "scene", "arguments", "flame_model", "utils"]
EXTENSIONS = {"diff_gaussian_rasterization": "rasterizer", "simple_knn": "simple_knn", "ga_ssim": "ga_ssim",
              "splat_binding": "splat_binding"}


def _sources(name: str) -> List[str]:
    if name.endswith(".py"):
        return [os.path.join(ROOT, name)]
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, name)):
        found.extend(os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))
    return found


def _target(module: str) -> str:
    top = module.split(".")[0]
    if top in PACKAGES:
        return top
    if top + ".py" in SCRIPTS:
        return top + ".py"
    return EXTENSIONS.get(top, "")


def imports_of(name: str) -> Dict[str, bool]:
    """``{target: lazy}`` for the package or script ``name``."""
    eager: Set[str] = set()
    seen: Set[str] = set()
    for path in _sources(name):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                target = _target(module)
                if target and target != name:
                    seen.add(target)
                    if id(node) in top_level:
                        eager.add(target)
    order = SCRIPTS + PACKAGES + sorted(set(EXTENSIONS.values()))
    return {t: t not in eager for t in sorted(seen, key=order.index)}


def main() -> int:
    for name in SCRIPTS + PACKAGES:
        label = name if name.endswith(".py") else name + "/"
        targets = imports_of(name)
        shown = ", ".join(t + (" (lazy)" if lazy else "") for t, lazy in targets.items()) or "-"
        print(f"| `{label}` | {shown} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
