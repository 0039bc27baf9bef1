"""pyinfra facts ssedeploy reads from a host, in the shape of pyinfra's own (typed, ``requires_command``,
``default``). Where pyinfra has the fact, its own is used instead: ``hardware.Cpus``, ``files.File``."""

from __future__ import annotations

import re
import shlex
from typing import Literal

from pyinfra.api import FactBase

from . import nginx

Revisions = dict[str, str | None]
PathState = tuple[str, str]  # ("F", sha256), ("L", link target) or ("D", "")


def open_files_limit(pid: int | str = 1, which: Literal["soft", "hard"] = "hard") -> str:
    """Shell that prints a process's open-files limit from /proc/PID/limits, the one way ssedeploy reads it
    (the deploy's fact, verify and the tests). ``pid`` may be shell, e.g. ``"$(cat /run/nginx.pid)"``."""
    field = {"soft": 4, "hard": 5}[which]  # "Max open files  SOFT  HARD  files"
    return f"awk '/^Max open files/ {{print ${field}}}' /proc/{pid}/limits"


class NginxVersion(FactBase[str | None]):
    """The installed nginx's version, e.g. ``"1.22.1"``; None when nginx is not installed."""

    def requires_command(self) -> str:
        return "/usr/sbin/nginx"

    def command(self) -> str:
        return "/usr/sbin/nginx -v 2>&1"

    def process(self, output):
        match = re.search(r"nginx/(\d+\.\d+\.\d+)", "\n".join(output))
        return match.group(1) if match else None


class NginxDefaultServers(FactBase[list[tuple[str, int, str]]]):
    """``[(file, port, listen line)]`` for every ``listen ... default_server`` in the sites ssedeploy's
    nginx.conf includes. Read from the files, not ``nginx -T``: that prints nothing when two sites both
    claim the default, which is the case to name."""

    def command(self) -> str:
        globs = " ".join(f"{nginx.LIVE}/{glob}" for glob in nginx.SITE_INCLUDES)
        return (f'for f in {globs}; do if [ -f "$f" ]; then printf "# configuration file %s:\\n" "$f"; '
                'cat "$f"; echo; fi; done')

    @staticmethod
    def default():
        return []  # no site file at all (a fresh host): no claim

    def process(self, output):
        return nginx.default_listens("\n".join(output))


def revision_request(port: int) -> str:
    """Shell that prints the loopback revision response (bash's /dev/tcp: no curl needed on the host)."""
    return (
        f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && "
        'printf "GET /ssedeploy/revision HTTP/1.0\\r\\n\\r\\n" >&3 && cat <&3\' 2>/dev/null'
    )


class NginxRevisions(FactBase[Revisions]):
    """``{"live": revision of the files in /etc/nginx, "served": revision nginx's workers serve}``, None
    where unknown. They differ when a run died between putting a config live and reloading."""

    def requires_command(self, port: int, state_dir: str) -> str:
        return "bash"  # revision_request's /dev/tcp

    def command(self, port: int, state_dir: str) -> str:
        return (
            f'printf "live %s\\n" "$(cat {state_dir}/revision 2>/dev/null)"; '
            f'printf "served %s\\n" "$({revision_request(port)} | tail -n 1)"'
        )

    @staticmethod
    def default() -> Revisions:
        return {"live": None, "served": None}

    def process(self, output):
        found = {key: value.strip() for key, _, value in (line.partition(" ") for line in output)}
        return {k: found[k] if re.fullmatch(r"[0-9a-f]{16}", found.get(k, "")) else None for k in ("live", "served")}


class NofileHardLimit(FactBase[int | None]):
    """The open-files hard limit of PID 1: no service (nginx included) can be given more. None: unknown."""

    def requires_command(self) -> str:
        return "awk"

    def command(self) -> str:
        return open_files_limit(1, "hard")

    def process(self, output):
        value = "".join(output).strip()
        return int(value) if value.isdigit() else None


class PathStates(FactBase[dict[str, PathState | None]]):
    """For each path: ``("F", sha256)`` for a file, ``("L", target)`` for a symlink, ``("D", "")`` for a
    directory, None if absent.

    One line per path, ``KIND<tab>PATH<tab>VALUE``: the path may hold spaces, and the value (a link
    target) comes last so it may hold anything but a newline. A path with a tab or newline is refused.
    """

    def command(self, paths: list[str]) -> str:
        bad = [p for p in paths if "\t" in p or "\n" in p]
        if bad:
            raise ValueError(f"PathStates: paths with a tab or newline are not supported: {bad!r}")
        quoted = " ".join(shlex.quote(p) for p in paths)
        return (
            f"for p in {quoted}; do "
            "if [ -L \"$p\" ]; then printf 'L\\t%s\\t%s\\n' \"$p\" \"$(readlink \"$p\")\"; "
            "elif [ -f \"$p\" ]; then printf 'F\\t%s\\t%s\\n' \"$p\" \"$(sha256sum < \"$p\" | cut -d' ' -f1)\"; "
            "elif [ -d \"$p\" ]; then printf 'D\\t%s\\t\\n' \"$p\"; "
            "else printf -- '-\\t%s\\t\\n' \"$p\"; fi; done"
        )

    @staticmethod
    def default() -> dict:
        return {}  # no path asked for

    def process(self, output):
        states: dict[str, PathState | None] = {}
        for line in output:
            kind, path, value = (line.split("\t", 2) + ["", ""])[:3]
            states[path] = None if kind == "-" else (kind, value)
        return states
