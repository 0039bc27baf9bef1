"""The fixture builds of tests/fixtures/nextbuild (real `next build` outputs, one route per case; build.sh
there makes them): a project directory to point app.source at."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nextbuild"
MAJORS = ("next15", "next16")


def built_project(tmp_path: Path, major: str = "next16") -> Path:
    """The fixture's manifests (as `.next`) beside src/'s route files, in a new directory under tmp_path."""
    project = tmp_path / f"built-{major}"
    project.mkdir()
    for part in ("app", "pages"):
        (project / part).symlink_to(FIXTURES / "src" / part)
    (project / ".next").symlink_to(FIXTURES / major / ".next")
    return project
