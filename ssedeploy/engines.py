"""The app's declared `engines.node` against the Node that would run it, decided before any host changes.

The range is read from the app's package.json (a Next.js project's own, beside its `.next/standalone`) and
judged by node-semver, a port of npm's own range code, so `^20.9 || >=22`, `20.x` and `>= 20` mean what
npm means by them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nodesemver


@dataclass(frozen=True)
class Declared:
    range: str | None  # None: the app declares no engines.node
    path: Path | None  # the package.json read; None: the app has none


def declared(source: str) -> Declared:
    """What the app at `source` (as app.source names it) declares; ValueError for an unreadable one."""
    src = Path(source)
    for path in (src / "package.json", src / ".next" / "standalone" / "package.json"):
        if path.is_file():
            break
    else:
        return Declared(None, None)
    try:
        engines = json.loads(path.read_text(encoding="utf-8")).get("engines") or {}
    except (ValueError, AttributeError):
        raise ValueError(f"{path} is not a JSON object") from None
    wanted = engines.get("node") if isinstance(engines, dict) else None
    if wanted is None:
        return Declared(None, path)
    if not isinstance(wanted, str) or nodesemver.valid_range(wanted, False) is None:
        raise ValueError(f"{path}: engines.node = {wanted!r} is not an npm version range")
    return Declared(wanted, path)


def satisfies(version: str, wanted: str) -> bool:
    return nodesemver.satisfies(version, wanted, False)


def refusal(host: str, app: str, found: Declared, version: str, where: str) -> str | None:
    """Why `version` may not run the app (None: it may). `where` says how that Node was chosen."""
    if found.range is None or satisfies(version, found.range):
        return None
    return (f"host {host}: app {app} declares engines.node {found.range!r} ({found.path}), but it would run on "
            f"Node.js {version} ({where}): set app.node to a Node that satisfies it (a line such as '24', or "
            "an exact version), or change the app's engines")
