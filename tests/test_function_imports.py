"""An import inside a function says why (CONTRIBUTING.md, "Layers": a function-level
import is for start-up time only, and says so in a comment): every block of such
imports in tuner/ has a comment on the line above it or on one of its lines."""
from __future__ import annotations

import ast
import os
from typing import List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORTS = (ast.Import, ast.ImportFrom)


def blocks(source: str) -> List[Tuple[int, int, bool]]:
    """(first line, last line, has a comment) of each run of import statements inside a
    function body (a branch's body counts as its own)."""
    lines = source.splitlines()
    out = set()
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            for name in ("body", "orelse", "finalbody"):
                body = getattr(node, name, None)
                if not isinstance(body, list):
                    continue
                i = 0
                while i < len(body):
                    j = i
                    while j < len(body) and isinstance(body[j], IMPORTS):
                        j += 1
                    if j > i:
                        first, last = body[i].lineno, body[j - 1].end_lineno
                        above = lines[first - 2].strip() if first > 1 else ""
                        said = above.startswith("#") or any("#" in lines[k - 1] for k in range(first, last + 1))
                        out.add((first, last, said))
                    i = max(j, i + 1)
    return sorted(out)


def test_every_function_level_import_says_why():
    silent = []
    for top, dirs, files in os.walk(os.path.join(REPO, "tuner")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(top, f)
                with open(path) as fh:
                    silent += [f"{os.path.relpath(path, REPO)}:{first}" for first, _, said in blocks(fh.read())
                               if not said]
    assert not silent, ("imports inside a function without a comment saying why (or move them to the "
                        "top):\n" + "\n".join(silent))


def test_the_check_sees_a_silent_import():
    code = ("def a():\n    import json\n    return json\n\n"
            "def b():\n    # Here: start-up time.\n    import json\n    from os import path\n    return json\n")
    assert [said for _, _, said in blocks(code)] == [False, True]
