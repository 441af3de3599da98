"""One judge (issue 25): the capacity model rates every limit (tuner/capacity.py:
judge, judge_other); diagnose, --watch, metrics and the probe ask it and set no status
of their own. Checked on the source, so a second judge cannot come back unnoticed."""
from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASKERS = ["tuner/diagnose", "tuner/metrics.py", "tuner/probing", "tuner/apply.py", "tuner/render.py"]
STATUS_WORDS = {"OK", "RAISE", "SHRINK", "BINDS", "SHORT", "CAPPED", "WARN", "NEAR", "FULL", "NA", "UNREADABLE"}


def _files():
    for rel in ASKERS:
        path = os.path.join(REPO, rel)
        if path.endswith(".py"):
            yield path
            continue
        for f in sorted(os.listdir(path)):
            if f.endswith(".py"):
                yield os.path.join(path, f)


def _chosen(node):
    """capacity.<status word> in an expression, outside comparisons (reading a status is
    asking; giving one is judging)."""
    if isinstance(node, ast.Compare):
        return
    if isinstance(node, ast.Attribute) and node.attr in STATUS_WORDS and \
            isinstance(node.value, ast.Name) and node.value.id == "capacity":
        yield node.attr
    for child in ast.iter_child_nodes(node):
        yield from _chosen(child)


def _judging(tree):
    """Assignments of a row's status, and status words given as a value (capacity.BINDS ...)."""
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr == "status":
                yield node.lineno, "assigns a status"
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.Return)) and node.value is not None:
            for word in _chosen(node.value):
                yield node.lineno, f"gives capacity.{word}"


def test_no_status_is_decided_outside_the_model():
    found = []
    for path in _files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        found += [f"{os.path.relpath(path, REPO)}:{line}: {what}" for line, what in _judging(tree)]
    assert not found, "a second judge (ask tuner.capacity instead):\n" + "\n".join(found)


def test_the_check_sees_a_relabelling():
    code = "if status == capacity.BINDS:\n    status = capacity.OK\nrow.status = status\n"
    assert len(list(_judging(ast.parse(code)))) == 2   # the comparison only asks
