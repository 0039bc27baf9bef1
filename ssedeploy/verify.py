"""`ssedeploy verify` and `ssedeploy drift`: is every host as declared, and would a deploy change anything?"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


CHANGE_ROW = re.compile(r"^\s{4}(?P<op>\S.*?)\s{2,}(?P<change>\d+ \(.*?\)|-)\s{2,}(?P<cond>\d+ \(.*?\)|-)\s*$")


def planned_changes(log: str) -> list[str]:
    """Operations pyinfra's dry run says would change something (the "Change" column)."""
    rows = []
    in_table = False
    for line in log.splitlines():
        if line.startswith("--> Detected changes"):
            in_table = True
            continue
        if in_table and line.startswith("-->"):
            break
        m = CHANGE_ROW.match(line) if in_table else None
        if m and m["change"] != "-":
            rows.append(f"{m['op']}: {m['change']}")
    return rows


def drift(inventory: str, limit: str | None = None, junitxml: str | None = None, extra: list[str] = ()) -> int:
    """Dry-run the deploy (read-only), list what would change, then verify. 0 none, 1 drift or failure, 3 error."""
    cmd = [str(BIN / "pyinfra"), "--dry", os.path.abspath(inventory), "deploy.py"]
    if limit:
        cmd[1:1] = ["--limit", limit]
    env = dict(os.environ, SSEDEPLOY_DRIFT="1")  # roles skip what needs secrets or a built app, saying so
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    log = result.stdout + result.stderr
    if result.returncode != 0 or "--> Detected changes" not in log:
        print(log, file=sys.stderr)
        print("ssedeploy drift: the dry run failed", file=sys.stderr)
        return 3
    for line in log.splitlines():
        if "skipped in drift mode" in line or "differs:" in line:
            print(line.strip())
    changes = planned_changes(log)
    if changes:
        print("ssedeploy drift: a deploy would change:")
        for row in changes:
            print(f"  {row}")
    else:
        print("ssedeploy drift: a deploy would change nothing")
    checks = verify(inventory, limit, junitxml, extra)
    if checks == 3:
        return 3
    return 1 if changes or checks else 0
