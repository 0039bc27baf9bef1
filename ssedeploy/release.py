"""Build a release on the controller: one archive and its content hash.

A Next.js project (after `next build` with output: 'standalone') is assembled the way
Next documents it: `.next/standalone` plus `.next/static` and `public`. Any other
directory is released as it is. The hash covers paths, modes and contents only, so the
same build always gives the same release name and a re-deploy changes nothing.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path


def release_files(source: str) -> list[tuple[str, Path]]:
    """(path inside the release, file on the controller), sorted; symlinks kept as links."""
    src = Path(source)
    standalone = src / ".next" / "standalone"
    roots = [("", standalone)] if standalone.is_dir() else [("", src)]
    if standalone.is_dir():
        roots += [(".next/static", src / ".next" / "static"), ("public", src / "public")]
    entries: dict[str, Path] = {}
    for prefix, root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                entries[f"{prefix}/{rel}" if prefix else rel] = path
    return sorted(entries.items())


def content_hash(files: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for rel, path in files:
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        else:
            digest.update(f"F {rel} {path.stat().st_mode & 0o777:o} ".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def build(source: str) -> tuple[str, str]:
    """Write the release archive to a temp file (once per run); returns (archive path, release hash)."""
    files = release_files(source)
    if not files:
        raise ValueError(f"app.source {source!r} holds no file to release")
    release = content_hash(files)
    fd, archive = tempfile.mkstemp(prefix=f"ssedeploy-release-{release}-", suffix=".tar.gz")
    atexit.register(lambda: os.path.exists(archive) and os.unlink(archive))
    with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        for rel, path in files:
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return archive, release


def name(content: str, node_version: str | None) -> str:
    """A release's name: its content hash, and the official Node build it runs (None: the distro's), so a
    new Node is a new release, checked before it serves, and a rollback brings its Node back."""
    return content if node_version is None else f"{content}-node{node_version}"


def content_of(release: str) -> str:
    """The content hash in a release's name (its build, whatever Node it runs)."""
    return release.split("-", 1)[0]


def env_file(values: dict[str, str]) -> str:
    """systemd EnvironmentFile text: one KEY="value" per line, quotes and backslashes escaped."""
    lines = []
    for key in sorted(values):
        value = values[key].replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key}="{value}"')
    return "".join(line + "\n" for line in lines)


def read_dotenv(path: str) -> dict[str, str]:
    values = {}
    for line in io.open(path, encoding="utf-8").read().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip().removeprefix("export ").strip()] = value
    return values
