"""No e2e test or benchmark reads pyinfra's console text as a result, or asks about an operation in a way
that passes when the operation did not run.

They read the run's results instead (tests/e2e/helpers.py `Results`, ssedeploy/run_results.py), whose
accessor fails for an operation that did not run on the host (tested in test_run_results.py). This
lint catches the old ways back in: pyinfra's per-host status words and totals, the operation_results
parser, and `.get(op, default)` on operation results (`ops.get(RELOAD, []) in ([], ["No changes"])`
passes for a renamed or skipped operation).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ["tests/e2e/*.py", "bench/*.py"]

TEXT = [
    (re.compile(r"operation_results"), "operation_results (parsed pyinfra's console text): use the run's results"),
    (re.compile(r"Grand total"), "pyinfra's results table: use the run's results"),
    (re.compile(r"No changes"), "pyinfra's per-host status: use results.of(host, op) == 'no change'"),
    (re.compile(r"\]\s*Success|[\"']Success[\"']"), "pyinfra's per-host status: use results.of(host, op) == 'changed'"),
]
STARTING = "Starting operation"
# Waiting for a live run to reach an operation before cutting it (tests/e2e/test_faults.py) is not a
# result: if the line never comes the test fails ("the run ended before ..."); it cannot pass vacuously.
WAITS_ON_LIVE_OUTPUT = {"startswith", "killed_at"}
RESULTS_NAME = re.compile(r"(?i)\b\w*(ops|operations|results)\b")


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _waits_on_live_output(node: ast.AST, parents: dict) -> bool:
    """The string is (part of) an argument of `x.startswith(...)` or `killed_at(...)`."""
    while node in parents and isinstance(parents[node], (ast.JoinedStr, ast.FormattedValue)):
        node = parents[node]
    call = parents.get(node)
    if not isinstance(call, ast.Call) or node not in call.args:
        return False
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in WAITS_ON_LIVE_OUTPUT


def problems(source: str, filename: str) -> list[str]:
    """`file:line: what` for each old pattern in `source`."""
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        for pattern, why in TEXT:
            if pattern.search(line):
                found.append(f"{filename}:{number}: {why}: {line.strip()}")
    tree = ast.parse(source, filename)
    parents = _parents(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and STARTING in node.value:
            if not _waits_on_live_output(node, parents):
                found.append(f"{filename}:{node.lineno}: '{STARTING}' (pyinfra's console text) as a result: "
                             "use results.ran() / results.of(host, op)")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) + len(node.keywords) >= 2 and RESULTS_NAME.search(ast.unparse(node.func.value))):
            found.append(f"{filename}:{node.lineno}: .get() with a default on operation results passes when the "
                         f"operation did not run: use results.of(host, op): {ast.unparse(node)}")
    return sorted(set(found), key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def scanned_files() -> list[Path]:
    return sorted(path for pattern in SCANNED for path in REPO.glob(pattern))


def test_e2e_tests_and_benchmarks_read_results_not_pyinfras_console_text():
    files = scanned_files()
    assert any(f.name == "helpers.py" for f in files) and any(f.parent.name == "bench" for f in files)
    found = [p for f in files for p in problems(f.read_text(), str(f.relative_to(REPO)))]
    assert not found, "\n".join(found)


OLD = '''
def test_reload(log, again):
    ops = operation_results(log)
    assert ops.get(RELOAD, []) in ([], ["No changes"])
    assert "Starting operation" not in log
    total = re.search(r"Grand total\\s+(\\d+)", log)
    assert not re.search(r"^\\s+\\[\\S+\\] Success", log, re.M)
    results = again.results
    assert results.data["hosts"]["web-1"].get("failed_at", None) is None
    assert ops[RESTART] == ["Success"]
'''


@pytest.mark.parametrize("what,line", [
    ("operation_results", 3), (".get() with a default", 4), ("No changes", 4), (f"'{STARTING}'", 5),
    ("Grand total", 6), ("Success", 7), (".get() with a default", 9), ("Success", 10),
])
def test_the_lint_names_file_and_line_of_each_old_pattern(what, line):
    found = problems(OLD, "tests/e2e/test_x.py")
    assert any(p.startswith(f"tests/e2e/test_x.py:{line}: ") and what in p for p in found), found


def test_the_lint_lets_a_wait_for_a_live_run_through_and_nothing_else():
    source = '''
for line in cut.stdout:
    if line.startswith(f"--> Starting operation: {reported(TREE)}"):
        break
killed_at(start_deploy(change), "--> Starting operation: nginx | nginx is running and enabled")
headers.get("server", "")
'''
    assert problems(source, "t.py") == []
    assert problems('assert f"--> Starting operation: {op}" in log\n', "t.py")
