"""`ssedeploy verify` and `ssedeploy drift`: is every host as declared, and would a deploy change anything?"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from . import run_results

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def verify(inventory: str, limit: str | None = None, junitxml: str | None = None, extra: list[str] = ()) -> int:
    """Run tests/host against the inventory: 0 all passed, 1 a check failed, 3 error."""
    cmd = [str(BIN / "pytest"), str(REPO / "tests" / "host"), "--inventory", os.path.abspath(inventory),
           "-p", "no:cacheprovider", "-v", "-rfE", "--tb=line", *extra]
    if limit:
        cmd += ["--limit", limit]
    if junitxml:
        cmd += ["--junitxml", os.path.abspath(junitxml)]
    code = subprocess.run(cmd, cwd=REPO).returncode
    return {0: 0, 1: 1}.get(code, 3)


def report(data: dict) -> list[str]:
    """drift's lines from a dry run's results: notes, then each operation that would change, with its files."""
    lines = [f"[{name}] {text}" for name, host in data["hosts"].items() for text in host["notes"]]
    changes = run_results.changes(data)
    if not changes:
        return lines + ["ssedeploy drift: a deploy would change nothing"]
    lines.append("ssedeploy drift: a deploy would change:")
    for name, op in changes:
        lines.append(f"  [{name}] {op['name']}")
        if op["files"]:
            lines.append(f"  [{name}] differs: {', '.join(op['files'])}")
    return lines


def dry_run(inventory: str, limit: str | None = None) -> tuple[dict | None, str]:
    """Run the deploy with pyinfra's --dry (read-only); (its results, or None when it failed; its log)."""
    cmd = [str(BIN / "pyinfra"), "--dry", os.path.abspath(inventory), "deploy.py"]
    if limit:
        cmd[1:1] = ["--limit", limit]
    with tempfile.TemporaryDirectory(prefix="ssedeploy-drift-") as tmp:
        path = Path(tmp) / "results.json"
        # Roles skip what needs secrets or a built app in drift mode, saying so in the results' notes.
        env = dict(os.environ, SSEDEPLOY_DRIFT="1", SSEDEPLOY_RESULTS=str(path))
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        log = result.stdout + result.stderr
        if result.returncode != 0:
            return None, log
        try:
            data = run_results.load(path)
        except run_results.ResultsError as e:
            return None, f"{log}\n{e}"
    if data["executed"]:
        return None, f"{log}\nthe dry run's results say operations were executed"
    if not data["hosts"]:
        return None, f"{log}\nthe dry run's results list no host"
    return data, log


def drift(inventory: str, limit: str | None = None, junitxml: str | None = None, extra: list[str] = ()) -> int:
    """Dry-run the deploy (read-only), list what would change, then verify. 0 none, 1 drift or failure, 3 error."""
    data, log = dry_run(inventory, limit)
    if data is None:
        print(log, file=sys.stderr)
        print("ssedeploy drift: the dry run failed", file=sys.stderr)
        return 3
    print("\n".join(report(data)))
    checks = verify(inventory, limit, junitxml, extra)
    if checks == 3:
        return 3
    return 1 if run_results.changes(data) or checks else 0
