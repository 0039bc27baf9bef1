"""pyinfra facts ssedeploy reads from a host (the shape of pyinfra's own facts)."""

from __future__ import annotations

import re
import shlex

from pyinfra.api import FactBase

from . import nginx


class NginxVersion(FactBase):
    """The installed nginx's version, e.g. ``"1.22.1"``; None when nginx is not installed."""

    def command(self) -> str:
        return "/usr/sbin/nginx -v 2>&1 || true"

    def process(self, output):
        match = re.search(r"nginx/(\d+\.\d+\.\d+)", "\n".join(output))
        return match.group(1) if match else None


class NginxDefaultServers(FactBase):
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


class NginxRevisions(FactBase):
    """``{"live": revision of the files in /etc/nginx, "served": revision nginx's workers serve}``, None
    where unknown. They differ when a run died between putting a config live and reloading."""

    def command(self, port: int, state_dir: str) -> str:
        return (
            f'printf "live %s\\n" "$(cat {state_dir}/revision 2>/dev/null)"; '
            f'printf "served %s\\n" "$({revision_request(port)} | tail -n 1)"'
        )

    def process(self, output):
        found = {key: value.strip() for key, _, value in (line.partition(" ") for line in output)}
        return {k: found[k] if re.fullmatch(r"[0-9a-f]{16}", found.get(k, "")) else None for k in ("live", "served")}


class NofileHardLimit(FactBase):
    """The open-files hard limit of PID 1: no service (nginx included) can be given more."""

    def command(self) -> str:
        return "awk '/^Max open files/ {print $5}' /proc/1/limits"

    def process(self, output):
        value = "".join(output).strip()
        return int(value) if value.isdigit() else None


class CpuCount(FactBase):
    """Online CPUs: what `worker_processes auto` would start."""

    def command(self) -> str:
        return "nproc"

    def process(self, output):
        return int("".join(output).strip() or 1)


class PathStates(FactBase):
    """For each path: ``("F", sha256)`` for a file, ``("L", target)`` for a symlink, ``("D", "")`` for a
    directory, None if absent."""

    def command(self, paths: list[str]) -> str:
        quoted = " ".join(shlex.quote(p) for p in paths)
        return (
            f"for p in {quoted}; do "
            'if [ -L "$p" ]; then printf "L %s %s\\n" "$p" "$(readlink "$p")"; '
            'elif [ -f "$p" ]; then printf "F %s %s\\n" "$p" "$(sha256sum < "$p" | cut -d" " -f1)"; '
            'elif [ -d "$p" ]; then printf "D %s \\n" "$p"; '
            'else printf -- "- %s\\n" "$p"; fi; done'
        )

    def process(self, output):
        states = {}
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "-":
                states[rest] = None
            else:
                path, _, value = rest.partition(" ")
                states[path] = (kind, value)
        return states


class FileMeta(FactBase):
    """``(user, group, octal mode)`` of a file, or None."""

    def command(self, path: str) -> str:
        return f"stat -c '%U %G %a' {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output):
        parts = "".join(output).split()
        return tuple(parts) if len(parts) == 3 else None
