"""pyinfra facts ssedeploy reads from a host, in the shape of pyinfra's own (typed, ``requires_command``,
``default``). Where pyinfra has the fact, its own is used instead: ``hardware.Cpus``, ``files.File``."""

from __future__ import annotations

import re
import shlex
from typing import Literal

from pyinfra.api import FactBase

from . import acme, nginx
from .instances import HostInstances, Instance, drain_name, unit_name
from .node import distro_version
from .paths import SYSTEMD_UNITS

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


def revision_request(port: int, path: str = nginx.REVISION_PATH) -> str:
    """Shell that prints a loopback revision server response (bash's /dev/tcp: no curl needed on the host)."""
    return (
        f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port} && "
        f'printf "GET {path} HTTP/1.0\\r\\n\\r\\n" >&3 && cat <&3\' 2>/dev/null'
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


class AppInstances(FactBase[HostInstances]):
    """The app's instances (ssedeploy.instances.HostInstances): the upstream port nginx serves (revision-proven)
    and the one in its live files, each instance's unit state, release and pending drain, the single unit of
    ssedeploy before two instances, and the `current`/`previous` releases."""

    def requires_command(self, app: str, app_dir: str, ports, revision_port: int, cluster: bool = False) -> str:
        return "bash"  # revision_request's /dev/tcp

    def command(self, app: str, app_dir: str, ports, revision_port: int, cluster: bool = False) -> str:
        """`cluster`: an app host of a cluster, whose live port is the one it recorded (its proxies follow
        it), not what an nginx on the host sends to."""
        site = f"{nginx.LIVE}/{nginx.SITE}"

        def unit(key: str, port: int | None) -> str:
            u, drain = unit_name(app, port), drain_name(app, port)
            return (f'printf "{key} %s %s %s %s\\n" "$(systemctl is-active {u} 2>/dev/null || true)" '
                    f'"$(systemctl is-enabled {u} 2>/dev/null || true)" '
                    f'"$(systemctl is-active {drain}.timer {drain}.service 2>/dev/null | grep -qx active && echo 1)" '
                    f'"$(readlink {app_dir}/instances/{port} 2>/dev/null)"')

        live = [f'printf "recorded %s\\n" "$(cat {app_dir}/live 2>/dev/null)"'] if cluster else [
            f'printf "served %s\\n" "$({revision_request(revision_port, nginx.UPSTREAM_PATH)} | tail -n 1)"',
            # The upstream block's one `server ADDRESS:PORT;` line (server blocks open with `server {`).
            f'printf "files %s\\n" "$(sed -n \'s/^ *server [^ {{]*:\\([0-9][0-9]*\\);.*/\\1/p\' {site} 2>/dev/null | head -n 1)"',
        ]
        return "; ".join([
            *live,
            *(unit(f"instance {port}", port) for port in ports),
            f'if [ -f {SYSTEMD_UNITS}/{unit_name(app, None)} ]; then {unit("legacy -", None)}; fi',
            f'printf "current %s\\n" "$(readlink {app_dir}/current 2>/dev/null)"',
            f'printf "previous %s\\n" "$(readlink {app_dir}/previous 2>/dev/null)"',
        ])

    @staticmethod
    def default() -> HostInstances:
        return HostInstances()

    def process(self, output):
        return parse_instances(output)


def _release(link: str) -> str | None:
    """The release a link names (`releases/ID` or `../releases/ID`)."""
    match = re.fullmatch(r"(?:\.\./)?releases/([^/]+)", link.strip())
    return match.group(1) if match else None


def parse_instances(lines) -> HostInstances:
    served_port = served_revision = files_port = recorded_port = current = previous = legacy = None
    instances: dict[int, Instance] = {}
    for line in lines:
        key, _, rest = line.partition(" ")
        if key == "served":
            match = re.fullmatch(r"([0-9a-f]{16}) (\d+)", rest.strip())
            if match:
                served_revision, served_port = match.group(1), int(match.group(2))
        elif key == "files" and rest.strip().isdigit():
            files_port = int(rest.strip())
        elif key == "recorded" and rest.strip().isdigit():
            recorded_port = int(rest.strip())
        elif key in ("instance", "legacy"):
            port, active, enabled, draining, link = (rest.split(" ", 4) + [""] * 5)[:5]
            inst = Instance(active=active or "inactive", enabled=enabled in ("enabled", "enabled-runtime"),
                            release=_release(link), draining=draining == "1")
            if key == "legacy":
                legacy = inst
            elif port.isdigit():
                instances[int(port)] = inst
        elif key == "current":
            current = _release(rest)
        elif key == "previous":
            previous = _release(rest)
    return HostInstances(served_port=served_port, served_revision=served_revision, files_port=files_port, recorded_port=recorded_port,
                         instances=instances, legacy=legacy, current=current, previous=previous)


class AppReleases(FactBase[dict]):
    """The releases kept on the host and when each was made live: ``{"kept": {ID: unpacked (epoch s)},
    "history": [(when, ID, port)]}``, history oldest first (scripts/app-release.sh appends to it)."""

    def command(self, app_dir: str) -> str:
        return (f'for r in {app_dir}/releases/*; do if [ -d "$r" ]; then '
                'printf "kept %s %s\\n" "$(basename "$r")" "$(stat -c %Y "$r")"; fi; done; '
                f'if [ -f {app_dir}/history ]; then sed "s/^/history /" {app_dir}/history; fi')

    @staticmethod
    def default() -> dict:
        return {"kept": {}, "history": []}

    def process(self, output):
        kept, history = {}, []
        for line in output:
            parts = line.split()
            if parts[:1] == ["kept"] and len(parts) == 3 and not parts[1].startswith("."):
                kept[parts[1]] = int(parts[2]) if parts[2].isdigit() else 0
            elif parts[:1] == ["history"] and len(parts) == 4:
                history.append((parts[1], parts[2], int(parts[3]) if parts[3].isdigit() else None))
        return {"kept": kept, "history": history}


class DistroNode(FactBase[str | None]):
    """The Node version of the distro's nodejs package: the installed one, else apt's candidate; None if apt
    knows none."""

    def command(self) -> str:
        return ("v=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' nodejs 2>/dev/null | awk '$1 ~ /^ii/ {print $2}'); "
                "if [ -n \"$v\" ]; then echo \"$v\"; else apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ {print $2}'; fi")

    def process(self, output):
        return distro_version("".join(output))


class AcmeCerts(FactBase[acme.Certs]):
    """The app's ACME certificate state (ssedeploy/acme.py's Certs): certbot's lineage (names, expiry,
    serial, CA), the serial ssedeploy put live, the one nginx serves on ``port`` for ``name``, and whether
    the live site serves the HTTP-01 challenge."""

    def command(self, lineage: str, renewal: str, live_dir: str, port: int, server_name: str) -> str:
        cert, q = f"{lineage}/cert.pem", shlex.quote
        served = (f"openssl s_client -connect 127.0.0.1:{port} -servername {q(server_name)} </dev/null 2>/dev/null"
                  " | openssl x509 -noout -serial 2>/dev/null")
        return (
            f"if command -v openssl >/dev/null && [ -f {cert} ]; then "
            # One openssl for the three (each start costs tens of ms): serial=, notAfter=, then the SAN's
            # header and its names on the next line.
            f"openssl x509 -in {cert} -noout -serial -enddate -ext subjectAltName | awk "
            "'sub(/^serial=/, \"serial \") || sub(/^notAfter=/, \"enddate \") {print; next} "
            "/Subject Alternative Name/ {san = 1; next} san {print \"san \" $0; san = 0}'; "
            f"echo \"server $(sed -n 's/^server *= *//p' {renewal} 2>/dev/null)\"; fi; "
            f"echo \"live $(readlink {live_dir}/live 2>/dev/null)\"; "
            f"if command -v openssl >/dev/null; then echo \"served $({served} | cut -d= -f2)\"; fi; "
            f"grep -qF {nginx.ACME_CHALLENGE_PATH} {nginx.LIVE}/{nginx.SITE} 2>/dev/null && echo 'challenge yes' || true"
        )

    @staticmethod
    def default():
        return acme.Certs()

    def process(self, output):
        return acme.read_state(output)


class FirewallState(FactBase[dict]):
    """``{"live_sha": sha256 of the boot file or None, "applied": the table as listed when last confirmed,
    "kernel": the table as nft lists it now (None: not loaded), "conntrack_max": int or None,
    "conntrack_writable": bool}`` (ssedeploy/firewall.py decides from it)."""

    def command(self, live_file: str, state_dir: str, table: str) -> str:
        return (
            f'echo "live $(sha256sum {live_file} 2>/dev/null | cut -d" " -f1)"; '
            f"if [ -f {state_dir}/applied.list ]; then echo '== applied'; cat {state_dir}/applied.list; fi; "
            f"if command -v nft >/dev/null && nft list table inet {table} > /dev/null 2>&1; then "
            f"echo '== kernel'; nft list table inet {table}; fi; echo '== end'; "
            'echo "conntrack $(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null)"; '
            "[ -w /proc/sys/net/netfilter/nf_conntrack_max ] && echo writable || true"
        )

    @staticmethod
    def default():
        return {"live_sha": None, "applied": None, "kernel": None, "conntrack_max": None, "conntrack_writable": False}

    def process(self, output):
        out, section = self.default(), None
        texts: dict[str, list[str]] = {}
        for line in output:
            if line.startswith("== "):
                section = line[3:].strip()
                if section in ("applied", "kernel"):
                    texts[section] = []
                continue
            if section in texts:
                texts[section].append(line)
            elif line.startswith("live "):
                out["live_sha"] = line[5:].strip() or None
            elif line.startswith("conntrack "):
                value = line[10:].strip()
                out["conntrack_max"] = int(value) if value.isdigit() else None
            elif line.strip() == "writable":
                out["conntrack_writable"] = True
        for key, lines in texts.items():
            out[key] = "\n".join(lines) + "\n"
        return out


class SystemUser(FactBase[dict | None]):
    """``{"home", "shell", "group"}`` of one account (``group``: its primary group's name); None when there is
    no such account. One ``getent``, where pyinfra's ``server.Users`` reads every account's lastlog and groups."""

    def command(self, user: str) -> str:
        q = shlex.quote(user)
        return f"if entry=$(getent passwd {q}); then echo \"$entry\"; id -gn {q}; fi"

    @staticmethod
    def default():
        return None

    def process(self, output):
        fields = output[0].split(":") if output else []
        if len(fields) < 7:
            return None
        return {"home": fields[5], "shell": fields[6], "group": output[1].strip() if len(output) > 1 else None}
