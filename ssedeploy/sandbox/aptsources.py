"""Read the machine's own apt sources, so no archive host name is written in code.

Sandbox hosts use the same archive the machine uses (and only that one is let
through NAT), whatever mirror the machine was set up with.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Source:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]

    @property
    def host(self) -> str:
        return urlsplit(self.uri).hostname or ""


def parse_one_line(text: str) -> list[Source]:
    """Parse the classic `deb [opts] URI SUITE COMP...` format."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) >= 3:
            out.append(Source(parts[1], (parts[2],), tuple(parts[3:])))
    return out


def parse_deb822(text: str) -> list[Source]:
    """Parse the deb822 `.sources` format (stanzas separated by blank lines)."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(
                Source(uri, tuple(fields.get("suites", "").split()), tuple(fields.get("components", "").split()))
            )
    return out


def machine_sources(root: str = "/") -> list[Source]:
    base = Path(root, "etc/apt")
    sources: list[Source] = []
    for path in [base / "sources.list", *sorted(glob.glob(str(base / "sources.list.d/*.list")))]:
        if Path(path).is_file():
            sources += parse_one_line(Path(path).read_text())
    for path in sorted(glob.glob(str(base / "sources.list.d/*.sources"))):
        sources += parse_deb822(Path(path).read_text())
    return sources


def find_uri(sources: list[Source], suite: str) -> str | None:
    """The first URI that serves `suite` (e.g. `bookworm` or `bookworm-security`)."""
    for source in sources:
        if suite in source.suites:
            return source.uri.rstrip("/")
    return None
