"""The host-side scripts, run without root against temporary trees with stub nginx, systemctl, node and
logger first on PATH: every failed command fails the step, and a kill at any fault point leaves a state
the next run converges from."""

from __future__ import annotations

import fnmatch
import hashlib
import http.server
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import threading
from pathlib import Path
from unittest import mock

import pytest
from pyinfra.api import FileUploadCommand

from roles.nginx import served_revision_check
from ssedeploy.deploy_lock import BUSY, holder_command
from ssedeploy.facts import AppInstances, NginxVersion, parse_instances, revision_request
from ssedeploy.instances import HostInstances, Instance, drain_name, live_port, unit_name
from ssedeploy.nginx import LIVE as NGINX_LIVE
from ssedeploy.nginx import UPSTREAM_PATH
from ssedeploy.operations import SCRIPTS
from ssedeploy.node import Build
from ssedeploy.operations import app as app_ops
from ssedeploy.operations import node as node_ops
from ssedeploy.operations.app import CHECK_SECONDS
from ssedeploy.paths import NGINX_STATE, NODE_LINK, STATE, app_dir, node_root
from ssedeploy.settings import parse

from ..polling import wait_until

# Each stub appends what it was asked to $STUB_LOG.
STUBS = {
    # `nginx -t -c CONF` judges CONF's directory: a missing nginx.conf, a dangling link or the word
    # "bogus" fails it with nginx's own wording. Anything else (reload, start) is only recorded.
    "nginx": r"""#!/bin/sh
echo "nginx $*" >> "$STUB_LOG"
[ "$1" = -t ] && [ "$2" = -c ] || exit 0
tree=$(dirname "$3")
[ -f "$3" ] || { echo "nginx: [emerg] open() \"$3\" failed (2: No such file or directory)" >&2; exit 1; }
for l in $(find -L "$tree" -type l); do
    echo "nginx: [emerg] open() \"$l\" failed (2: No such file or directory)" >&2; exit 1
done
if hit=$(grep -rn bogus "$tree" | head -n 1) && [ -n "$hit" ]; then
    echo "nginx: [emerg] unknown directive \"bogus\" in ${hit%%:*}:$(echo "$hit" | cut -d: -f2)" >&2
    echo "nginx: configuration file $3 test failed" >&2
    exit 1
fi
echo "nginx: the configuration file $3 syntax is ok" >&2
echo "nginx: configuration file $3 test is successful" >&2
""",
    # Records which release `current` named when the unit was restarted.
    "systemctl": r"""#!/bin/sh
echo "systemctl $* current=$(readlink "$STUB_APP_DIR/current")" >> "$STUB_LOG"
""",
    # app-check.js: fails when the live release has a file named `bad` (or nothing is live).
    "node": r"""#!/bin/sh
echo "node $*" >> "$STUB_LOG"
if [ ! -d "$STUB_APP_DIR/current" ] || [ -e "$STUB_APP_DIR/current/bad" ]; then
    echo "check failed" >> "$STUB_LOG"; echo "app check failed: /healthz answered 500" >&2; exit 1
fi
echo "check passed" >> "$STUB_LOG"
""",
    "logger": r"""#!/bin/sh
echo "logger $*" >> "$STUB_LOG"
""",
}


def stubbed(tmp_path: Path, stubs: dict[str, str], bin_name: str = "bin", **extra: str) -> dict[str, str]:
    """An environment with `stubs` first on PATH (in tmp_path/bin_name), each logging to $STUB_LOG."""
    bin_dir = tmp_path / bin_name
    bin_dir.mkdir()
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "stub.log"), **extra}


@pytest.fixture
def env(tmp_path):
    return stubbed(tmp_path, STUBS, STUB_APP_DIR=str(tmp_path / "app"))


def calls(env, name: str) -> list[str]:
    log = Path(env["STUB_LOG"])
    return [line for line in log.read_text().splitlines() if line.startswith(name)] if log.exists() else []


def run(env, script: str, *args, fault: str | None = None) -> subprocess.CompletedProcess:
    """Run a script as the host does (/bin/sh is dash on Debian); FAULT sets SSEDEPLOY_FAULT_AT."""
    extra = {"SSEDEPLOY_FAULT_AT": fault} if fault else {}
    return subprocess.run(["/bin/sh", str(SCRIPTS / script), *map(str, args)], env={**env, **extra},
                          capture_output=True, text=True, timeout=60)


def killed(result) -> bool:
    return result.returncode == -9


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ROOT: ("d", mode), ("f", mode, sha256) or ("l", target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("f", stat.S_IMODE(st.st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return out


# -- nginx-swap.sh ----------------------------------------------------------------------------------

OLD_REV, GOOD_REV, BAD_REV = "0" * 16, "1" * 16, "2" * 16
SITE = "sites-available/ssedeploy.conf"


class Nginx:
    """A live tree, the state dir beside it, and stages to swap in."""

    def __init__(self, root: Path):
        self.live, self.state = root / "etc-nginx", root / "state"
        files = {"nginx.conf": "events {}\nhttp { include sites-enabled/*; }\n", "mime.types": "types {}\n",
                 SITE: "server { listen 80; }\n", "sites-available/default": "server { listen 8080; }\n",
                 "conf.d/keep.conf": "# not ssedeploy's\n", "ssl/private.key": "secret\n"}
        for rel, text in files.items():
            (self.live / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.live / rel).write_text(text)
        (self.live / "ssl/private.key").chmod(0o600)
        (self.live / "ssl").chmod(0o750)
        (self.live / "sites-enabled").mkdir()
        for name in ("ssedeploy.conf", "default"):
            (self.live / "sites-enabled" / name).symlink_to(f"../sites-available/{name}")
        (self.state / "backups").mkdir(parents=True)
        for stamp in ("20200101T000000.000000000", "20200102T000000.000000000"):
            (self.state / "backups" / stamp).mkdir()
        (self.state / "revision").write_text(OLD_REV + "\n")
        self.old = snapshot(self.live)
        self.new = {False: self.expected(), True: self.expected(bad=True)}

    FILES = {"nginx.conf": "events {}\nhttp { include sites-enabled/*; gzip on; }\n",
             SITE: "server { listen 80; include snippets/sse.conf; }\n",
             "snippets/sse.conf": "proxy_buffering off;\n"}

    def stage(self, bad: bool = False) -> Path:
        """Upload a stage the way nginx_config does (a fresh one for every run)."""
        revision = BAD_REV if bad else GOOD_REV
        stage = self.state / f"stage-{revision}"
        shutil.rmtree(stage, ignore_errors=True)
        for rel, text in self.FILES.items():
            if bad and rel == SITE:
                text = text.replace("listen 80;", "listen 80; bogus on;")
            (stage / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / "files" / rel).write_text(text)
        (stage / "links").write_text("sites-enabled/ssedeploy.conf ../sites-available/ssedeploy.conf\n")
        (stage / "remove").write_text("sites-enabled/default\n")
        (stage / "revision").write_text(revision + "\n")
        return stage

    def expected(self, bad: bool = False) -> dict[str, tuple]:
        """The whole new tree, worked out here from the stage's meaning, not by the script."""
        stage, new = self.stage(bad), dict(self.old)
        for path in sorted((stage / "files").rglob("*")):
            rel = str(path.relative_to(stage / "files"))
            if path.is_dir():
                new.setdefault(rel, ("d", 0o755))  # install -D makes missing directories 0755
            else:
                new[rel] = ("f", 0o644, hashlib.sha256(path.read_bytes()).hexdigest())
        new.pop("sites-enabled/default")
        new["sites-enabled/ssedeploy.conf"] = ("l", "../sites-available/ssedeploy.conf")
        shutil.rmtree(stage)
        return new

    def swap(self, env, stage: Path, fault: str | None = None, keep: int = 2):
        return run(env, "nginx-swap.sh", stage, keep, self.live, self.state, fault=fault)

    @property
    def journal(self) -> Path:
        return self.state / "swap-in-progress"

    def revision(self) -> str:
        return (self.state / "revision").read_text().strip()

    def backups(self) -> list[str]:
        return sorted(p.name for p in (self.state / "backups").iterdir())


@pytest.fixture
def nginx(tmp_path):
    return Nginx(tmp_path)


def only_tested(env):
    """nginx was only ever asked to test a config: never started, reloaded or stopped."""
    assert calls(env, "nginx") and all(c.startswith("nginx -t -c ") for c in calls(env, "nginx")), calls(env, "nginx")
    assert not calls(env, "systemctl")


def test_swap_puts_the_whole_stage_live_and_records_its_revision(nginx, env):
    result = nginx.swap(env, nginx.stage())
    assert result.returncode == 0, result.stderr
    assert snapshot(nginx.live) == nginx.new[False]
    assert nginx.revision() == GOOD_REV and not nginx.journal.exists()
    assert not (nginx.state / f"stage-{GOOD_REV}").exists() and not (nginx.state / "swap-work").exists()
    backups = nginx.backups()
    assert len(backups) == 2 and backups[0] == "20200102T000000.000000000"  # BACKUPS_TO_KEEP, oldest pruned
    assert snapshot(nginx.state / "backups" / backups[1]) == nginx.old
    only_tested(env)
    assert calls(env, "nginx") == [f"nginx -t -c {nginx.live}/nginx.conf"]


def test_nginx_t_failing_restores_the_tree_byte_for_byte(nginx, env):
    result = nginx.swap(env, nginx.stage(bad=True))
    assert result.returncode == 1
    assert 'unknown directive "bogus"' in result.stderr and "restored as it was" in result.stderr
    assert snapshot(nginx.live) == nginx.old  # paths, modes, link targets and contents
    assert nginx.revision() == OLD_REV and not nginx.journal.exists()
    assert "bogus" in (nginx.state / "failed" / SITE).read_text()
    assert nginx.backups() == ["20200101T000000.000000000", "20200102T000000.000000000"]
    assert not (nginx.state / f"stage-{BAD_REV}").exists()
    only_tested(env)


@pytest.mark.parametrize("fault", ["install fails (disk full)", "target dir cannot be created"])
def test_a_staged_file_that_cannot_be_put_in_place_fails_the_step_and_leaves_the_old_tree(nginx, env, fault):
    stage = nginx.stage()
    if fault == "install fails (disk full)":  # root reads any file, so fail the copy itself
        stub = Path(env["PATH"].split(":")[0]) / "install"
        stub.write_text('#!/bin/sh\necho "install: error writing: No space left on device" >&2\nexit 1\n')
        stub.chmod(0o755)
    else:
        (stage / "files/mime.types").mkdir()  # mime.types is a file on the host: no directory there
        (stage / "files/mime.types/x.conf").write_text("x\n")
    result = nginx.swap(env, stage)
    assert result.returncode != 0 and result.stderr
    assert snapshot(nginx.live) == nginx.old
    assert nginx.revision() == OLD_REV and not nginx.journal.exists()
    assert not calls(env, "nginx"), "nginx -t ran on a tree that was never whole"


# Each fault point, the run that reaches it. "recover": a run that finds the journal an earlier run
# (killed at point 11, its tree part old, part new) left.
SWAP_POINTS = {
    1: "recover", 2: "recover", 3: "recover", 4: "recover", 5: "recover",     # putting the backup back
    6: "good", 7: "good", 8: "good", 9: "good",                               # backup, new tree built aside
    10: "good", 11: "good", 12: "good",                                       # live tree swapped file by file
    13: "good", 14: "good", 15: "good", 16: "good",                           # revision, journal, pruning
    17: "bad", 18: "bad", 19: "bad", 20: "bad", 21: "bad",                    # nginx -t failed: restore
}
# Points where the live tree is part new and a failed command puts the backup back before exiting.
SWAP_UNDONE_AT_ONCE = {10, 11, 12, 13, 14}


def start_swap(nginx, env, scenario: str, fault: str):
    if scenario == "recover":
        assert killed(nginx.swap(env, nginx.stage(), fault="11"))
        assert nginx.journal.exists() and snapshot(nginx.live) not in (nginx.old, nginx.new[False])
    return nginx.swap(env, nginx.stage(bad=scenario == "bad"), fault=fault)


def assert_whole_or_journaled(nginx, new: dict):
    """Whole old, or whole new; anything between only with a journal naming a whole backup of the old tree,
    and each path then either its old or its new self (temp files beside them aside)."""
    assert nginx.live.is_dir()
    now = snapshot(nginx.live)
    if not nginx.journal.exists():
        assert now in (nginx.old, new)
    else:
        backup = dict(line.split("=", 1) for line in nginx.journal.read_text().splitlines())["backup"]
        assert snapshot(Path(backup)) == nginx.old
        for path in set(now) | set(nginx.old) | set(new):
            if not path.endswith(".ssedeploy-tmp"):
                assert now.get(path) in (nginx.old.get(path), new.get(path)), path
    if nginx.revision() != OLD_REV:
        assert now == new and nginx.revision() == GOOD_REV, "a revision recorded for a tree that did not pass"


def assert_converges(nginx, env):
    result = nginx.swap(env, nginx.stage())
    assert result.returncode == 0, result.stderr
    assert snapshot(nginx.live) == nginx.new[False] and nginx.revision() == GOOD_REV and not nginx.journal.exists()
    assert subprocess.run(["nginx", "-t", "-c", f"{nginx.live}/nginx.conf"], env=env).returncode == 0
    assert not list(nginx.state.glob("swap-work*")) and not list(nginx.state.glob("backups/*.tmp"))
    only_tested(env)


@pytest.mark.parametrize("point", sorted(SWAP_POINTS))
def test_swap_killed_at_each_point_leaves_a_whole_tree_or_a_journal_and_the_next_run_converges(nginx, env, point):
    scenario = SWAP_POINTS[point]
    assert killed(start_swap(nginx, env, scenario, str(point))), f"point {point} not reached"
    assert_whole_or_journaled(nginx, nginx.new[scenario == "bad"])
    assert_converges(nginx, env)


@pytest.mark.parametrize("point", sorted(SWAP_POINTS))
def test_swap_failing_at_each_point_fails_the_step_and_the_next_run_converges(nginx, env, point):
    scenario = SWAP_POINTS[point]
    result = start_swap(nginx, env, scenario, f"{point}:fail")
    assert result.returncode == 1 and f"fault injected at point {point}" in result.stderr
    assert_whole_or_journaled(nginx, nginx.new[scenario == "bad"])
    if point in SWAP_UNDONE_AT_ONCE:
        assert snapshot(nginx.live) == nginx.old and not nginx.journal.exists() and nginx.revision() == OLD_REV
        assert "restored as it was" in result.stderr
    assert_converges(nginx, env)


@pytest.mark.parametrize("scenario", ["good", "bad", "recover"])
def test_swap_has_no_fault_point_beyond_the_table(nginx, env, scenario):
    assert not killed(start_swap(nginx, env, scenario, str(max(SWAP_POINTS) + 1)))


# -- app-release.sh ---------------------------------------------------------------------------------
# A host without root: the app directory, the nginx tree (the Nginx helper above), systemd kept in files by
# stub systemctl/systemd-run, and what nginx serves. The controller's side is real: app_live and app_settle
# are run with a stand-in for pyinfra's `host` whose AppInstances fact is the fact's own command run here,
# so release_plan/settle_plan decide each run from what the host shows, and the script gets the very
# arguments app_live builds (host paths mapped to this tree).

APP = "sseapp"
SETTINGS = parse({"app": {"name": APP, "drain_seconds": 7, "keep_releases": 2}}, offline=True)
PORTS = SETTINGS.app.instance_ports
LIVE_PORT, IDLE_PORT = PORTS  # before a test's release: 3000 serves A, 3001 is idle (it last ran Z)
NODE_HOME = "v24.22.3-linux-x64"  # the Node build the test releases run (under node_root)
OLD_NODE_HOME = "v24.22.1-linux-x64"  # the oldest release's (Z): it goes when Z is pruned
# The history a test host starts with (release, port), oldest first.
HISTORY = [("Z", IDLE_PORT), ("A", LIVE_PORT)]

APP_STUBS = {
    # systemd in files under $STUB_SYSTEMD: active/UNIT (its state; none: inactive), enabled/UNIT, runs/UNIT
    # (the release an app instance started on: its link then), timers/NAME (systemd-run's). `start` of an
    # active unit does nothing, as systemd's. When nginx (re)loads, it serves its live files: `served` holds
    # the revision (what FETCH prints), `upstream` "REVISION PORT" (what /ssedeploy/upstream answers).
    "systemctl": r"""#!/bin/sh
echo "systemctl $*" >> "$STUB_LOG"
sd=$STUB_SYSTEMD verb= quiet= units= status=0
for a; do
    case $a in
        -q | --quiet) quiet=1 ;;
        -*) ;;
        *) if [ -z "$verb" ]; then verb=$a; else units="$units $a"; fi ;;
    esac
done
case $verb in
    start | stop | reload | reset-failed | enable | disable | daemon-reload | show) ;;
    is-active | is-enabled) status=1 ;;
    *) echo "stub systemctl: $verb is not stubbed" >&2; exit 2 ;;
esac
state() {
    case $1 in
        *.timer) if [ -e "$sd/timers/${1%.timer}" ]; then echo active; else echo inactive; fi ;;
        *) cat "$sd/active/$1" 2>/dev/null || echo inactive ;;
    esac
}
load() {
    port=$(sed -n 's/^ *server [^ {]*:\([0-9][0-9]*\);.*/\1/p' "$STUB_NGINX_LIVE/sites-available/ssedeploy.conf")
    cp "$STUB_NGINX_STATE/revision" "$sd/served"
    echo "$(cat "$sd/served") $port" > "$sd/upstream"
    echo "nginx serves $(cat "$sd/upstream")" >> "$STUB_LOG"
}
for u in $units; do
    case $u in *.service | *.timer) ;; *) u=$u.service ;; esac
    case $verb in
        start)
            [ "$(state "$u")" != active ] || continue
            case $u in
                nginx.service) load ;;
                "$STUB_APP"@*.service)
                    port=${u#*@} && port=${port%.service}
                    release=$(readlink -f "$STUB_APP_DIR/instances/$port") || true
                    if [ ! -d "$release" ]; then
                        echo failed > "$sd/active/$u"; echo "Job for $u failed." >&2; status=1; continue
                    fi
                    basename "$release" > "$sd/runs/$u" ;;
            esac
            echo active > "$sd/active/$u" ;;
        stop)
            rm -f "$sd/active/$u" "$sd/runs/$u"
            case $u in *.timer) rm -f "$sd/timers/${u%.timer}" ;; esac ;;
        reload)
            if [ "$(state "$u")" != active ]; then echo "$u is not active, cannot reload." >&2; status=1; continue; fi
            if [ "$u" = nginx.service ]; then load; fi ;;
        reset-failed) if [ "$(state "$u")" = failed ]; then rm -f "$sd/active/$u"; fi ;;
        enable) touch "$sd/enabled/$u" ;;
        disable) rm -f "$sd/enabled/$u" ;;
        is-active)
            s=$(state "$u")
            [ -n "$quiet" ] || echo "$s"
            if [ "$s" = active ]; then status=0; fi ;;
        is-enabled)
            if [ -e "$sd/enabled/$u" ]; then s=enabled status=0; else s=disabled; fi
            [ -n "$quiet" ] || echo "$s" ;;
        show)  # only `show -p NRestarts --value UNIT`: a release with a file `crash` restarts at each look
            n=$(cat "$sd/restarts-$u" 2>/dev/null || echo 0)
            if [ -e "$STUB_APP_DIR/releases/$(cat "$sd/runs/$u" 2>/dev/null)/crash" ]; then n=$((n + 1)); fi
            echo "$n" > "$sd/restarts-$u"
            echo "$n" ;;
    esac
done
exit $status
""",
    # Named transient timers only: timers/NAME holds the seconds, then the command. A NAME still loaded is
    # refused, as systemd does.
    "systemd-run": r"""#!/bin/sh
echo "systemd-run $*" >> "$STUB_LOG"
name= seconds=
while [ $# -gt 0 ]; do
    case $1 in
        --unit=*) name=${1#--unit=} ;;
        --on-active=*) seconds=${1#--on-active=} ;;
        -*) ;;
        *) break ;;
    esac
    shift
done
if [ -z "$name" ] || [ -z "$seconds" ] || [ $# -eq 0 ]; then echo "stub systemd-run: named timers only" >&2; exit 2; fi
if [ -e "$STUB_SYSTEMD/timers/$name" ]; then
    echo "Failed to start transient timer unit: Unit $name.timer was already loaded or has a fragment file." >&2
    exit 1
fi
printf '%s\n%s\n' "$seconds" "$*" > "$STUB_SYSTEMD/timers/$name"
""",
    "journalctl": r"""#!/bin/sh
echo "journalctl $*" >> "$STUB_LOG"
echo "stub journal: the app's last lines"
""",
    # `node app-check.js HOST PORT HEALTH_PATH TIMEOUT_S SSE_PATH...`: passes when the port's instance is
    # active and the release its link names has no file `bad`.
    "node": r"""#!/bin/sh
echo "node $*" >> "$STUB_LOG"
host=$2 port=$3 health=$4
release=$(readlink -f "$STUB_APP_DIR/instances/$port") || true
# An app that dies at start never answers: the check waits (until the release step gives up on it).
if [ -e "$release/crash" ]; then exec sleep 60; fi
if [ "$(cat "$STUB_SYSTEMD/active/$STUB_APP@$port.service" 2>/dev/null)" != active ]; then
    why="$health: connect ECONNREFUSED $host:$port"
elif [ -e "$release/bad" ]; then
    why="$health answered 500"
else
    echo "check passed $port $(basename "$release")" >> "$STUB_LOG"
    exit 0
fi
echo "check failed $port" >> "$STUB_LOG"
echo "app check failed on $host:$port: $why" >&2
exit 1
""",
}


@pytest.fixture
def app_env(env):
    """The module's stubs, with systemctl and node replaced by the ones above, and systemd-run, journalctl."""
    bin_dir = Path(env["PATH"].split(":")[0])
    for name, text in APP_STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return env


def rev(port: int, bad: bool = False) -> str:
    """The revision of the nginx tree whose upstream is PORT."""
    return f"{'b' if bad else '0'}{port:015x}"


def site(port: int, bad: bool = False) -> str:
    """The site file, its upstream at PORT (a line as the AppInstances fact reads it)."""
    return (f"upstream {APP} {{\n    server 127.0.0.1:{port};\n}}\n"
            f"server {{ listen 80;{' bogus on;' if bad else ''} }}\n")


class Controller:
    """pyinfra's `host` as app_live and app_settle ask it."""

    def __init__(self, world):
        self.world, self.noops = world, []

    def get_fact(self, fact, **kwargs):
        if fact is NginxVersion:
            return "1.22.1" if self.world.nginx else None
        if fact is AppInstances:
            assert kwargs["app_dir"] == app_dir(SETTINGS) and tuple(kwargs["ports"]) == PORTS
            return self.world.found()
        raise AssertionError(f"fact {fact.__name__} not stood in for")

    def noop(self, text: str):
        self.noops.append(text)


class World:
    """A host serving release A on port 3000, nginx sending there; B (newer) and BAD (fails its check) are
    unpacked, Z is the oldest. `first`: a fresh host, B the only release, no nginx."""

    AGES = {"Z": 1000, "A": 2000, "BAD": 3000, "B": 4000}  # mtimes: pruning keeps the newest

    def __init__(self, root: Path, env, first: bool = False):
        self.root, self.dir, self.sd = root, root / "app", root / "systemd"
        self.ssedeploy_state = root / "ssedeploy"  # STATE (app-check.js)
        self.node_root = Path(self.here(node_root(SETTINGS)))
        self.check_js = self.ssedeploy_state / "app-check.js"
        self.check_js.parent.mkdir()
        self.check_js.write_text("// stub: node is a stub too\n")
        for sub in ("active", "enabled", "runs", "timers"):
            (self.sd / sub).mkdir(parents=True)
        self.bad_stage = False  # app_live's stage fails nginx -t
        self.nginx = None if first else Nginx(root)
        for name in ["B"] if first else self.AGES:
            self.unpack(name, self.AGES[name], OLD_NODE_HOME if name == "Z" else NODE_HOME)
        self.env = {**env, "STUB_APP": APP, "STUB_APP_DIR": str(self.dir), "STUB_SYSTEMD": str(self.sd),
                    "STUB_NGINX_LIVE": str(root / "etc-nginx"), "STUB_NGINX_STATE": str(root / "state")}
        if first:
            return
        (self.dir / "instances").mkdir()
        (self.dir / "instances" / str(LIVE_PORT)).symlink_to("../releases/A")
        (self.dir / "instances" / str(IDLE_PORT)).symlink_to("../releases/Z")
        (self.dir / "current").symlink_to("releases/A")
        (self.dir / "previous").symlink_to("releases/Z")
        (self.dir / "history").write_text("".join(f"2020-01-0{i + 1}T00:00:00Z {r} {p}\n"
                                                  for i, (r, p) in enumerate(HISTORY)))
        (self.nginx.live / SITE).write_text(site(LIVE_PORT))
        (self.nginx.state / "revision").write_text(rev(LIVE_PORT) + "\n")
        # app_live uploads these beside the stage (app-release.sh runs nginx-swap.sh without its own fault
        # point, whose numbers are the swap's: a point of app-release.sh is reached).
        shutil.copy(SCRIPTS / "nginx-swap.sh", self.nginx.state / "nginx-swap.sh")
        shutil.copy(SCRIPTS / "revision-wait.sh", self.nginx.state / "revision-wait.sh")
        for unit in ("nginx.service", unit_name(APP, LIVE_PORT)):
            self.systemctl("enable", unit)
            self.systemctl("start", unit)
        self.tree = snapshot(self.nginx.live)

    def unpack(self, name: str, age: int, node: str | None = NODE_HOME):
        """A whole release (it holds its name) unpacked at time AGE, linked to the Node build NODE (None: no
        link, as releases made before releases linked their Node)."""
        release = self.dir / "releases" / name
        release.mkdir(parents=True)
        (release / "id").write_text(name)
        if name == "BAD":
            (release / "bad").write_text("fails its check\n")
        if node:
            home = self.node_root / node
            if not home.exists():  # the stub node (app-check.js) as that build's bin/node
                (home / "bin").mkdir(parents=True)
                (home / "bin" / "node").write_text(APP_STUBS["node"].replace('echo "node $*"', 'echo "node:$0 $*"'))
                (home / "bin" / "node").chmod(0o755)
            (release / NODE_LINK).symlink_to(home)
        os.utime(release, (age, age))

    # -- the host as the controller reaches it

    def here(self, text: str) -> str:
        """A command or argument for the host, with the host's paths mapped to this tree."""
        for host_side, here in [
                (revision_request(SETTINGS.site.revision_port), f"cat {self.sd}/served"),  # FETCH
                (NGINX_STATE, str(self.root / "state")), (STATE, str(self.ssedeploy_state)),
                (app_dir(SETTINGS), str(self.dir)), (NGINX_LIVE, str(self.root / "etc-nginx")),
                ("/etc/systemd/system/", f"{self.root}/etc-systemd/")]:
            text = text.replace(host_side, here)
        return text

    def found(self) -> HostInstances:
        """What the AppInstances fact reads here: its own command, nginx's answer taken from `upstream`."""
        command = AppInstances().command(app=APP, app_dir=app_dir(SETTINGS), ports=PORTS,
                                         revision_port=SETTINGS.site.revision_port)
        ask = revision_request(SETTINGS.site.revision_port, UPSTREAM_PATH)
        assert ask in command
        command = self.here(command.replace(ask, f"cat {self.sd}/upstream 2>/dev/null"))
        out = subprocess.run(command, shell=True, env={**self.env, "STUB_LOG": os.devnull}, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return parse_instances(out.stdout.splitlines())

    def staged(self, settings, app_port: int):
        """nginx_tree.staged, standing in: a stage whose site file sends to APP_PORT."""
        revision = rev(app_port, bad=self.bad_stage)
        stage = self.nginx.state / f"stage-{revision}"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "files" / SITE).parent.mkdir(parents=True)
        (stage / "files" / SITE).write_text(site(app_port, bad=self.bad_stage))
        (stage / "links").write_text("sites-enabled/ssedeploy.conf ../sites-available/ssedeploy.conf\n")
        (stage / "remove").write_text("")
        (stage / "revision").write_text(revision + "\n")
        return None, [], str(stage), revision

    def operation(self, op, *args) -> tuple[list[str], list[str]]:
        """The shell commands the operation yields for this host (its uploads done here), and its no-op notes."""
        controller = Controller(self)
        with mock.patch.multiple(app_ops, host=controller, staged=self.staged,
                                 report_differences=lambda paths: None):
            yielded = list(op._inner(*args))
        for upload in (c for c in yielded if isinstance(c, FileUploadCommand)):
            dest = Path(self.here(upload.dest))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(upload.src.getvalue() if hasattr(upload.src, "getvalue") else Path(upload.src).read_text())
        return [c for c in yielded if isinstance(c, str)], controller.noops

    def live(self, target: str, fault: str | None = None, settings=SETTINGS, hold: bool = False):
        """app_live: the release script with the arguments it builds (kept in `last_args`), run here (None:
        nothing owed); `hold`: a cluster's app host."""
        commands, noops = self.operation(app_ops.app_live, settings, target, False, hold)
        if not commands:
            assert noops
            return None
        (command,) = commands
        words = shlex.split(command)
        assert words[0] == "systemd-run" and "--wait" in words
        self.last_args = words[words.index(f"{STATE}/app-release.sh") + 1:]
        return run(self.env, "app-release.sh", *map(self.here, self.last_args), fault=fault)

    def settle(self) -> list[str]:
        """app_settle: its commands, run here."""
        commands, _ = self.operation(app_ops.app_settle, SETTINGS)
        for command in commands:
            done = subprocess.run(self.here(command), shell=True, env=self.env, capture_output=True, text=True,
                                  timeout=30)
            assert done.returncode == 0, (command, done.stderr)
        return commands

    def deploy(self, target: str):
        """The app's part of a run (roles/app.py): app_live, then app_settle unless app_live failed."""
        result = self.live(target)
        if result is None or result.returncode == 0:
            self.settle()
        return result

    # -- what happens on the host between runs

    def systemctl(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run(["systemctl", *args], env={**self.env, "STUB_LOG": os.devnull}, capture_output=True,
                              text=True, timeout=30)

    def drains_end(self):
        """Every drain timer fires: it runs its command, then is gone."""
        for timer in sorted((self.sd / "timers").iterdir()):
            command = timer.read_text().splitlines()[1]
            done = subprocess.run(command, shell=True, env=self.env, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            timer.unlink()

    def power_cut(self):
        """The host boots again: no transient timer is left, each enabled unit starts (an instance on the
        release its link names), and nginx loads its live files."""
        for sub in ("active", "runs", "timers"):
            shutil.rmtree(self.sd / sub)
            (self.sd / sub).mkdir()
        for unit in sorted(os.listdir(self.sd / "enabled")):
            self.systemctl("start", unit)

    # -- what the host shows

    def state(self, unit: str) -> str:
        path = self.sd / "active" / unit
        return path.read_text().strip() if path.exists() else "inactive"

    def runs(self, unit: str) -> str | None:
        path = self.sd / "runs" / unit
        return path.read_text().strip() if path.exists() else None

    def enabled(self, unit: str) -> bool:
        return (self.sd / "enabled" / unit).exists()

    def link(self, rel: str) -> str | None:
        path = self.dir / rel
        return os.readlink(path) if path.is_symlink() else None

    def upstream(self) -> str | None:
        """What nginx's workers answer on /ssedeploy/upstream: "REVISION PORT"."""
        path = self.sd / "upstream"
        return path.read_text().strip() if path.exists() else None

    def timers(self) -> dict[str, list[str]]:
        return {p.name: p.read_text().splitlines() for p in sorted((self.sd / "timers").iterdir())}

    def instances(self) -> dict[int, tuple]:
        """Per port: (state, enabled, the release it runs, its link)."""
        return {port: (self.state(u), self.enabled(u), self.runs(u), self.link(f"instances/{port}"))
                for port in PORTS for u in [unit_name(APP, port)]}

    def history(self) -> list[tuple[str, int]]:
        path = self.dir / "history"
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ \d+", line), line
        return [(line.split()[1], int(line.split()[2])) for line in lines]

    def releases(self) -> list[str]:
        return sorted(r for r in os.listdir(self.dir / "releases") if not r.startswith("."))

    def leftovers(self) -> list[str]:
        """What a run cut short left in the app directory (a release's first step removes it)."""
        known = {"releases", "instances", "current", "previous", "history", "live", "node"}
        return sorted([p for p in os.listdir(self.dir) if p not in known]
                      + [f"instances/{p}" for p in os.listdir(self.dir / "instances") if not p.isdigit()]
                      + [f"releases/{p}" for p in os.listdir(self.dir / "releases") if p.startswith(".")]
                      + [f"node/{p}" for p in os.listdir(self.node_root) if p.startswith(".")])

    def essentials(self) -> dict:
        """What serves, and how: nginx's answer, files and revision, the instances and their timers, `current`."""
        return {"upstream": self.upstream(), "tree": snapshot(self.nginx.live),
                "revision": self.nginx.revision(), "journal": self.nginx.journal.exists(),
                "instances": self.instances(), "timers": self.timers(), "current": self.link("current")}

    def bookkeeping(self) -> dict:
        return {"previous": self.link("previous"), "history": self.history(), "releases": self.releases(),
                "node": sorted(p for p in os.listdir(self.node_root) if not p.startswith(".")),
                "leftovers": self.leftovers()}

    def serving(self) -> str:
        """The release the host serves: nginx sends to a port (what it serves, else its live files) whose
        instance is active, runs the release its link names, and passes its check. Fails the test if not."""
        found = self.found()
        port = live_port(found, PORTS)
        assert port is not None, f"nginx sends to no instance port: {found}"
        unit = unit_name(APP, port)
        assert self.state(unit) == "active", f"nginx sends to port {port}, whose {unit} is {self.state(unit)}"
        assert self.runs(unit) == found.instances[port].release, f"{unit} runs another release than its link names"
        check = subprocess.run(["node", str(self.check_js), SETTINGS.app.bind, str(port), SETTINGS.app.health_path,
                                "1", *SETTINGS.site.sse_paths], env={**self.env, "STUB_LOG": os.devnull},
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        return self.runs(unit)


@pytest.fixture
def world(tmp_path, app_env):
    return World(tmp_path, app_env)


def touches(env, unit: str) -> list[str]:
    """The systemctl calls that start, stop or restart UNIT."""
    pattern = rf"systemctl (start|stop|restart)( -\S+)* {re.escape(unit)}"
    return [c for c in calls(env, "systemctl") if re.fullmatch(pattern, c)]


def assert_before_the_release(world):
    """Nothing of what served changed: nginx (files, revision, what it serves), the live instance, the links,
    the history and the releases."""
    assert world.upstream() == f"{rev(LIVE_PORT)} {LIVE_PORT}" and world.serving() == "A"
    assert snapshot(world.nginx.live) == world.tree and world.nginx.revision() == rev(LIVE_PORT)
    assert not world.nginx.journal.exists()
    assert not [c for c in calls(world.env, "systemctl") if "nginx" in c]
    assert world.instances()[LIVE_PORT] == ("active", True, "A", "../releases/A")
    assert not [c for c in calls(world.env, "systemctl") if unit_name(APP, LIVE_PORT) in c]
    assert (world.link("current"), world.link("previous")) == ("releases/A", "releases/Z")
    assert world.history() == HISTORY and world.releases() == sorted(World.AGES) and not world.timers()
    assert not calls(world.env, "systemd-run")


def test_release_is_checked_on_the_idle_port_then_nginx_switches_to_it_and_the_old_one_drains(world):
    result = world.live("B")
    assert result.returncode == 0, result.stderr
    idle, old = unit_name(APP, IDLE_PORT), unit_name(APP, LIVE_PORT)
    idle_drain, old_drain = drain_name(APP, IDLE_PORT), drain_name(APP, LIVE_PORT)
    log = Path(world.env["STUB_LOG"]).read_text().splitlines()
    assert f"systemctl show -p NRestarts --value {idle}" in log  # the check watches for an app that exits
    assert [line for line in log if not line.startswith("systemctl show")] == [
        f"systemctl stop {idle_drain}.timer {idle_drain}.service",  # 1. the idle port: anything there ends
        f"systemctl stop {idle}",
        f"systemctl reset-failed {idle}",
        f"systemctl start {idle}",                                  # 2. started there and checked
        # The check runs on the Node the release links (the one its instance runs), not whatever PATH has.
        f"node:releases/B/{NODE_LINK}/bin/node {world.check_js} 127.0.0.1 {IDLE_PORT} /healthz {CHECK_SECONDS} /api/stream",
        f"check passed {IDLE_PORT} B",
        f"systemctl enable --quiet {idle}",                         # starts at boot before nginx names it
        f"nginx -t -c {world.nginx.live}/nginx.conf",               # 3. nginx switched, reloaded, proven
        "systemctl is-active --quiet nginx",
        "systemctl reload nginx",
        f"nginx serves {rev(IDLE_PORT)} {IDLE_PORT}",
        f"systemctl disable --quiet {old}",                         # 4. the old one no longer starts at boot
        f"systemctl stop {old_drain}.timer {old_drain}.service",    # 5. the old one drains
        f"systemctl reset-failed {old_drain}.timer {old_drain}.service",
        f"systemd-run --quiet --unit={old_drain} --on-active={SETTINGS.app.drain_seconds} "
        f"--timer-property=AccuracySec=100ms systemctl stop {old}",
    ]
    assert world.serving() == "B" and world.upstream() == f"{rev(IDLE_PORT)} {IDLE_PORT}"
    assert (world.nginx.live / SITE).read_text() == site(IDLE_PORT) and world.nginx.revision() == rev(IDLE_PORT)
    assert world.instances() == {IDLE_PORT: ("active", True, "B", "../releases/B"),
                                 LIVE_PORT: ("active", False, "A", "../releases/A")}  # draining
    assert world.timers() == {old_drain: [str(SETTINGS.app.drain_seconds), f"systemctl stop {old}"]}
    assert world.found().instances[LIVE_PORT].draining
    assert (world.link("current"), world.link("previous")) == ("releases/B", "releases/A")
    assert world.history() == [*HISTORY, ("B", IDLE_PORT)]
    # keep_releases 2: B and BAD are the newest; A stays (previous, and the draining instance runs it); Z goes,
    # and with it the Node build only Z ran.
    assert world.releases() == ["A", "B", "BAD"] and not world.leftovers()
    assert world.bookkeeping()["node"] == [NODE_HOME]
    assert world.settle() == []  # nothing left for app_settle
    world.drains_end()
    assert world.instances()[LIVE_PORT] == ("inactive", False, None, "../releases/A")
    assert world.live("B") is None and world.settle() == []  # the next run has nothing to do


def test_without_drain_seconds_the_old_instance_is_stopped_at_once(world):
    result = world.live("B", settings=parse({"app": {"name": APP, "drain_seconds": 0}}, offline=True))
    assert result.returncode == 0, result.stderr
    old = unit_name(APP, LIVE_PORT)
    assert calls(world.env, "systemctl")[-1] == f"systemctl stop --no-block {old}"
    assert world.state(old) == "inactive" and not world.timers() and not calls(world.env, "systemd-run")
    assert world.serving() == "B"


def test_a_release_while_the_last_one_drains_ends_that_drain_first(world):
    assert world.deploy("B").returncode == 0
    world.unpack("C", 5000)
    Path(world.env["STUB_LOG"]).unlink()
    result = world.deploy("C")
    assert result.returncode == 0, result.stderr
    # C goes to 3000, where A still drained: its timer and A stop before C starts there.
    drain = drain_name(APP, LIVE_PORT)
    assert calls(world.env, "systemctl")[:3] == [f"systemctl stop {drain}.timer {drain}.service",
                                                 f"systemctl stop {unit_name(APP, LIVE_PORT)}",
                                                 f"systemctl reset-failed {unit_name(APP, LIVE_PORT)}"]
    assert world.serving() == "C" and world.upstream() == f"{rev(LIVE_PORT)} {LIVE_PORT}"
    assert world.instances() == {LIVE_PORT: ("active", True, "C", "../releases/C"),
                                 IDLE_PORT: ("active", False, "B", "../releases/B")}
    assert list(world.timers()) == [drain_name(APP, IDLE_PORT)]
    assert (world.link("current"), world.link("previous")) == ("releases/C", "releases/B")
    assert world.history() == [*HISTORY, ("B", IDLE_PORT), ("C", LIVE_PORT)]
    assert world.releases() == ["B", "C"]  # BAD and A: beyond keep_releases and no link names them


def test_a_release_that_fails_its_check_is_stopped_and_gets_no_traffic(world):
    result = world.live("BAD")
    assert result.returncode == 1
    assert f"release BAD failed its check on port {IDLE_PORT} and was stopped" in result.stderr
    assert "BAD answered 500" not in result.stderr and "/healthz answered 500" in result.stderr
    assert "stub journal" in result.stderr
    idle = unit_name(APP, IDLE_PORT)
    assert touches(world.env, idle)[-2:] == [f"systemctl start {idle}", f"systemctl stop {idle}"]
    assert world.instances()[IDLE_PORT] == ("inactive", False, None, "../releases/BAD")
    assert not calls(world.env, "nginx")  # not even nginx -t
    assert_before_the_release(world)


def test_a_release_whose_app_exits_at_start_fails_at_once_not_after_the_check_timeout(world):
    world.unpack("CRASH", 5000)
    (world.dir / "releases" / "CRASH" / "crash").write_text("exits at start\n")
    result = world.live("CRASH")  # the stub check would wait 60 s: only the restart watch ends it
    assert result.returncode == 1
    assert f"app check failed on 127.0.0.1:{IDLE_PORT}: the app exited (systemd restarted it" in result.stderr
    assert f"release CRASH failed its check on port {IDLE_PORT} and was stopped" in result.stderr
    assert world.instances()[IDLE_PORT][0] == "inactive"
    assert not calls(world.env, "nginx") and world.serving() == "A"
    assert not touches(world.env, unit_name(APP, LIVE_PORT))


def test_nginx_refusing_the_switch_stops_the_checked_release_and_restores_nginx(world):
    world.bad_stage = True
    result = world.live("B")
    assert result.returncode == 1
    assert 'unknown directive "bogus"' in result.stderr and "restored as it was" in result.stderr
    assert f"nginx refused the switch to port {IDLE_PORT} (above); release B was stopped" in result.stderr
    idle = unit_name(APP, IDLE_PORT)
    assert calls(world.env, "check") == [f"check passed {IDLE_PORT} B"]
    assert touches(world.env, idle)[-2:] == [f"systemctl start {idle}", f"systemctl stop {idle}"]
    assert world.instances()[IDLE_PORT] == ("inactive", False, None, "../releases/B")
    assert "bogus" in (world.nginx.state / "failed" / SITE).read_text()
    assert_before_the_release(world)


def test_a_release_not_on_the_host_is_refused_before_anything(world):
    before = snapshot(world.root / "app"), snapshot(world.sd)
    result = world.live("NOPE")
    assert result.returncode == 1 and "releases/NOPE is not on the host" in result.stderr
    assert not Path(world.env["STUB_LOG"]).exists()  # no systemctl, node, nginx
    assert (snapshot(world.root / "app"), snapshot(world.sd)) == before


def test_the_first_release_starts_on_the_first_port_with_nothing_to_switch_or_drain(tmp_path, app_env):
    world = World(tmp_path, app_env, first=True)
    assert world.found() == HostInstances(instances={port: Instance() for port in PORTS})
    result = world.deploy("B")
    assert result.returncode == 0, result.stderr
    unit = unit_name(APP, LIVE_PORT)
    assert world.instances() == {LIVE_PORT: ("active", True, "B", "../releases/B"),
                                 IDLE_PORT: ("inactive", False, None, None)}
    assert calls(world.env, "check") == [f"check passed {LIVE_PORT} B"]
    assert not [c for c in calls(world.env, "systemctl") if "nginx" in c or "disable" in c]
    assert not calls(world.env, "systemd-run") and not calls(world.env, "nginx") and not world.timers()
    assert (world.link("current"), world.link("previous")) == ("releases/B", None)
    assert world.history() == [("B", LIVE_PORT)] and world.releases() == ["B"]
    assert f"systemctl enable --quiet {unit}" in calls(world.env, "systemctl")


# Each fault point of app-release.sh, and the release that reaches it: "good" (B: checked, switched to),
# "bad" (BAD: fails its check).
RELEASE_POINTS = {
    1: "good",                                # the idle instance stopped
    2: "good", 3: "good",                     # its link being switched; switched, not started
    4: "bad",                                 # it failed its check, still running
    5: "good",                                # it passed, nginx not switched
    6: "good", 7: "good", 8: "good",          # nginx's files switched; reloaded; the new revision served
    9: "good",                                # the new instance enabled, the old one disabled
    10: "good", 11: "good", 12: "good",       # previous being moved; current being moved; history written
    13: "good",                               # the old instance's drain scheduled
    14: "good",                               # a release being pruned
    15: "good",                               # a Node build no kept release runs being pruned
}
TARGETS = {"good": "B", "bad": "BAD"}
SWITCHED_AT = 7  # from this point on nginx serves the new release

# After a cut from SWITCHED_AT on, the release is live: the next run owes none, and app_settle converges the
# instances and records the release (`current`, `previous`, the history) as an uninterrupted run does; what
# still differs, per point (by choice: a settle only converges what serves and what is recorded): nothing is
# pruned, or a cut's leftovers stay, until the next release.
NOT_PRUNED = {"releases": sorted(World.AGES), "node": [OLD_NODE_HOME, NODE_HOME]}
RECORDED_OTHERWISE = {
    7: NOT_PRUNED, 8: NOT_PRUNED, 9: NOT_PRUNED, 10: NOT_PRUNED, 11: NOT_PRUNED, 12: NOT_PRUNED, 13: NOT_PRUNED,
    14: {"leftovers": [".releases-by-age", "releases/.pruning-Z"], "node": [OLD_NODE_HOME, NODE_HOME]},
    15: {"leftovers": [f"node/.pruning-{OLD_NODE_HOME}"]},
}
# What a release's first step removes (`rm -f instances/*.new current.new previous.new`, `rm -rf
# .releases-by-age releases/.pruning-*`).
LEFTOVERS = ("instances/*.new", "current.new", "previous.new", ".releases-by-age", "releases/.pruning-*",
             "node/.pruning-*", "node/.install-*")

_REFERENCES: dict[str, tuple] = {}


def reference(scenario: str, env, tmp_path_factory) -> tuple:
    """What a run nobody interrupts leaves, once its drain is over: (exit status, essentials, bookkeeping)."""
    if scenario not in _REFERENCES:
        root = tmp_path_factory.mktemp(f"reference-{scenario}")
        world = World(root, {**env, "STUB_LOG": str(root / "stub.log")})
        result = world.deploy(TARGETS[scenario])
        world.drains_end()
        _REFERENCES[scenario] = (result.returncode, world.essentials(), world.bookkeeping())
    return _REFERENCES[scenario]


def cut(world, point: int, mode: str = "kill"):
    scenario = RELEASE_POINTS[point]
    result = world.live(TARGETS[scenario], fault=str(point) if mode == "kill" else f"{point}:fail")
    if mode == "kill":
        assert killed(result), f"point {point} not reached: {result.stderr}"
    else:
        assert result.returncode == 1 and f"fault injected at point {point}" in result.stderr, result.stderr
    return result


def assert_bookkeeping_sane(world, want: dict):
    """Every link names a whole kept release; previous is not current; the history is the old one, plus this
    release at most once; releases are kept as the uninterrupted run keeps them, or not yet pruned; anything
    else left is what the next release removes first."""
    now = world.bookkeeping()
    for rel in ["current", "previous", *(f"instances/{p}" for p in PORTS)]:
        target = world.link(rel)
        if target is not None:
            name = target.removeprefix("../").removeprefix("releases/")
            assert name in now["releases"] and (world.dir / "releases" / name / "id").read_text() == name, rel
    assert now["previous"] != world.link("current")
    assert now["history"][:len(HISTORY)] == HISTORY and now["history"][len(HISTORY):] in ([], want["history"][-1:])
    assert set(want["releases"]) <= set(now["releases"]) <= set(World.AGES)
    for left in now["leftovers"]:
        assert any(fnmatch.fnmatch(left, pattern) for pattern in LEFTOVERS), left


@pytest.mark.parametrize("point", sorted(RELEASE_POINTS))
@pytest.mark.parametrize("mode", ["kill", "fail"])
def test_release_cut_at_each_point_keeps_the_host_serving_and_the_next_run_converges(
        world, tmp_path_factory, point, mode):
    scenario = RELEASE_POINTS[point]
    status, essentials, bookkeeping = reference(scenario, world.env, tmp_path_factory)
    cut(world, point, mode)
    # What served serves until nginx is switched, then the checked release: never neither.
    assert world.serving() == ("B" if point >= SWITCHED_AT and scenario == "good" else "A")
    assert not touches(world.env, unit_name(APP, LIVE_PORT)), "the live instance was stopped or restarted"
    # The next run decides from what it finds, and ends where an uninterrupted run ends.
    result = world.deploy(TARGETS[scenario])
    assert (result.returncode if result else 0) == status, result.stderr
    world.drains_end()
    assert world.essentials() == essentials
    assert [p for p, (state, *_) in world.instances().items() if state != "inactive"] == (
        [IDLE_PORT] if scenario == "good" else [LIVE_PORT])
    assert world.live(world.serving()) is None and world.settle() == []  # settled: nothing owed
    assert_bookkeeping_sane(world, bookkeeping)
    assert world.bookkeeping() == {**bookkeeping, **RECORDED_OTHERWISE.get(point, {})}


# A kill as a power cut makes it: the host then boots with the units enabled and nginx's live files. From
# point 6 on those files name the new instance, which app-release.sh enabled before the swap.
FILES_SWITCHED_AT = 6


@pytest.mark.parametrize("point", sorted(RELEASE_POINTS))
def test_a_power_cut_at_each_point_leaves_a_host_that_serves_once_it_boots(world, point):
    cut(world, point)
    world.power_cut()
    assert world.serving() == ("B" if point >= FILES_SWITCHED_AT and RELEASE_POINTS[point] == "good" else "A")


@pytest.mark.parametrize("scenario", sorted(TARGETS))
def test_release_has_no_fault_point_beyond_the_table(world, scenario):
    result = world.live(TARGETS[scenario], fault=str(max(RELEASE_POINTS) + 1))
    assert result.returncode == (0 if scenario == "good" else 1), result.stderr


# -- node-install.sh (through the command node_build yields) --------------------------------------------

VERSION = "24.22.3"
CURL = r"""#!/bin/sh
echo "curl $*" >> "$STUB_LOG"
out= url=
while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift ;; -*) ;; *) url=$1 ;; esac; shift; done
[ -z "${STUB_CURL_FAIL:-}" ] || { echo "curl: (22) The requested URL returned error: 404" >&2; exit 22; }
cp "$STUB_TARBALL" "$out"
"""


def node_tarball(path: Path, says: str = f"v{VERSION}") -> str:
    """An official build's layout (node-vX-linux-x64/bin/node) whose node prints SAYS; returns its sha256."""
    body = f"#!/bin/sh\necho {says}\n".encode()
    with tarfile.open(path, "w:xz") as tar:
        info = tarfile.TarInfo(f"node-v{VERSION}-linux-x64/bin/node")
        info.size, info.mode = len(body), 0o755
        tar.addfile(info, io.BytesIO(body))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def node_env(env, tmp_path):
    bin_dir = Path(env["PATH"].split(":")[0])
    (bin_dir / "curl").write_text(CURL)
    (bin_dir / "curl").chmod(0o755)
    tarball = tmp_path / "node.tar.xz"
    return {**env, "STUB_TARBALL": str(tarball)}, tarball


def install(env, root: Path, sha: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """node_build's command for ROOT (the host's paths mapped here), run."""
    build = Build(VERSION, "x64", f"http://mirror.test/v{VERSION}/node-v{VERSION}-linux-x64.tar.xz", sha)
    with mock.patch.multiple(node_ops, host=mock.Mock(get_fact=lambda *a, **k: {}),
                             report_differences=lambda paths: None):
        commands = [c for c in node_ops.node_build._inner(build, str(root)) if isinstance(c, str)]
    words = shlex.split(commands[-1])
    assert words[:2] == ["/bin/sh", f"{STATE}/node-install.sh"]
    return run(env, "node-install.sh", *words[2:], fault=fault)


def test_node_install_checks_the_sha256_then_unpacks_the_build_beside_the_others(node_env, tmp_path):
    env, tarball = node_env
    root = tmp_path / "node"
    (root / "v22.23.5-linux-x64" / "bin").mkdir(parents=True)  # another version stays as it is
    result = install(env, root, node_tarball(tarball))
    assert result.returncode == 0, result.stderr
    assert subprocess.run([root / f"v{VERSION}-linux-x64/bin/node"], capture_output=True, text=True).stdout == f"v{VERSION}\n"
    assert sorted(os.listdir(root)) == ["v22.23.5-linux-x64", f"v{VERSION}-linux-x64"]  # nothing left behind
    # Installed: a second run downloads nothing.
    before = len(calls(env, "curl"))
    assert install(env, root, node_tarball(tarball)).returncode == 0 and len(calls(env, "curl")) == before == 1


@pytest.mark.parametrize("case", ["tampered", "wrong version", "unreachable"])
def test_node_install_refuses_a_build_that_fails_its_check_and_installs_nothing(node_env, tmp_path, case):
    env, tarball = node_env
    root = tmp_path / "node"
    sha = node_tarball(tarball, says="v1.2.3" if case == "wrong version" else f"v{VERSION}")
    if case == "tampered":
        tarball.write_bytes(tarball.read_bytes() + b"\0")  # one byte more than the SHASUMS256.txt entry
    result = install({**env, **({"STUB_CURL_FAIL": "1"} if case == "unreachable" else {})}, root, sha)
    assert calls(env, "curl"), "no download was tried"
    assert result.returncode == 1
    assert {"tampered": "SHA-256", "wrong version": "says v1.2.3", "unreachable": "cannot download"}[case] in result.stderr
    assert "nothing was installed" in result.stderr and os.listdir(root) == []


def test_node_install_cut_short_leaves_only_its_work_directory_which_the_next_run_replaces(node_env, tmp_path):
    env, tarball = node_env
    root = tmp_path / "node"
    sha = node_tarball(tarball)
    work = root / f".install-v{VERSION}-linux-x64"
    (work / "home" / "bin").mkdir(parents=True)  # a run cut while unpacking
    (work / "node.tar.xz").write_bytes(b"half")
    result = install(env, root, sha)
    assert result.returncode == 0, result.stderr
    assert os.listdir(root) == [f"v{VERSION}-linux-x64"]


# -- deploy-lock.sh (through the command deploy_lock.py runs) ------------------------------------------

@pytest.fixture
def lock(tmp_path, env):
    """Start holders of a lock in tmp_path, with the real flock and the stub logger."""
    started = []

    def start(shared: bool = False, wait: float = 0, lease: int = 30) -> subprocess.Popen:
        command = holder_command(shared, wait, lock=str(tmp_path / "deploy.lock"),
                                 owner_file=str(tmp_path / "deploy.owner"), lease=lease)
        process = subprocess.Popen(command, shell=True, env=env, text=True, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_lock_is_taken_logged_and_released_when_the_channel_closes(lock, env, tmp_path):
    holder = lock()
    assert holder.stdout.readline() == "locked\n"
    me = (tmp_path / "deploy.owner").read_text().strip()
    assert " pid " in me and any(f"taken by {me}" in c for c in calls(env, "logger"))
    holder.stdin.close()  # the controller's channel closes
    assert holder.wait(timeout=10) == 0
    assert any(f"released by {me}" in c for c in calls(env, "logger"))
    assert lock().stdout.readline() == "locked\n"


def test_lock_held_fails_with_the_busy_status_naming_the_holder(lock, tmp_path):
    holder = lock()
    assert holder.stdout.readline() == "locked\n"
    me = (tmp_path / "deploy.owner").read_text().strip()
    refused = lock(wait=1)
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode == BUSY
    assert out.splitlines() == [f"waiting {me}", f"busy {me}"]


def test_a_waiting_run_gets_the_lock_when_the_holder_goes(lock):
    holder = lock()
    assert holder.stdout.readline() == "locked\n"
    waiting = lock(wait=60)
    assert waiting.stdout.readline().startswith("waiting ")
    holder.stdin.close()
    assert waiting.stdout.readline() == "locked\n"


def test_shared_holders_coexist_and_keep_an_exclusive_one_out(lock):
    first, second = lock(shared=True), lock(shared=True)
    assert first.stdout.readline() == second.stdout.readline() == "locked\n"
    refused = lock(wait=0)
    refused.communicate(timeout=30)
    assert refused.returncode == BUSY


def test_lock_is_given_up_when_nothing_arrives_for_the_lease(lock, env):
    holder = lock(lease=1)  # its stdin stays open but silent: the network vanished
    assert holder.stdout.readline() == "locked\n"
    assert wait_until(lambda: holder.poll() is not None, 30, "the holder gave up") and holder.returncode == 0
    assert any("released by" in c for c in calls(env, "logger"))
    assert lock().stdout.readline() == "locked\n"


# -- revision-wait.sh (through the command roles/nginx.py runs) ----------------------------------------

@pytest.fixture
def served():
    """A loopback server answering /ssedeploy/revision with served["body"]; served["requests"] counts."""
    state = {"body": "", "requests": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state["requests"] += 1
            body = state["body"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["port"] = server.server_address[1]
    yield state
    server.shutdown()
    server.server_close()


def revision_wait(served, state_dir: Path, timeout: int):
    command = served_revision_check(parse({"site": {"revision_port": served["port"]}}), timeout=timeout,
                                    state_dir=str(state_dir))
    return subprocess.Popen(command, shell=True, text=True, stderr=subprocess.PIPE)


def test_revision_wait_succeeds_once_nginx_serves_the_recorded_revision(served, tmp_path):
    (tmp_path / "revision").write_text(GOOD_REV + "\n")
    served["body"] = OLD_REV + "\n"
    waiting = revision_wait(served, tmp_path, timeout=60)
    wait_until(lambda: served["requests"] >= 2, 30, "the revision asked for")  # still the old one: it polls
    assert waiting.poll() is None
    served["body"] = GOOD_REV + "\n"  # the new workers took over
    assert waiting.wait(timeout=30) == 0


def test_revision_wait_fails_naming_both_revisions_after_its_timeout(served, tmp_path):
    (tmp_path / "revision").write_text(GOOD_REV + "\n")
    served["body"] = OLD_REV + "\n"
    waiting = revision_wait(served, tmp_path, timeout=1)
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1
    assert f"nginx does not serve config revision {GOOD_REV} 1 s after the reload (it serves: {OLD_REV})" in err


def test_revision_wait_fails_clearly_when_no_revision_was_recorded(served, tmp_path):
    _, err = revision_wait(served, tmp_path, timeout=1).communicate(timeout=30)
    assert "no config revision recorded" in err


# -- acme-cert.sh (ACME certificates: issue, install, wait, renew) ---------------------------------------
# Real openssl makes and reads the certificates; its s_client is stubbed to print what nginx "serves":
# $STUB_SERVED, a path read at the time of the call (through the `live` link: an nginx that reloaded).
ACME_STUBS = {
    "openssl": r"""#!/bin/sh
if [ "$1" = s_client ]; then
    echo "openssl $*" >> "$STUB_LOG"
    [ -n "${STUB_SERVED:-}" ] && [ -f "$STUB_SERVED" ] && cat "$STUB_SERVED"
    exit 0
fi
exec /usr/bin/openssl "$@"
""",
    "nginx": r"""#!/bin/sh
echo "nginx $*" >> "$STUB_LOG"
if [ -e "$STUB_TMP/nginx-refuses" ]; then
    echo "nginx: [emerg] SSL_CTX_use_PrivateKey failed (key values mismatch)" >&2; exit 1
fi
""",
    "systemctl": r"""#!/bin/sh
echo "systemctl $*" >> "$STUB_LOG"
""",
    # certbot certonly: succeeds, or fails like the CA does, or (an account the CA forgot) like certbot 2.1 does.
    "certbot": r"""#!/bin/sh
echo "certbot $* CA_BUNDLE=${REQUESTS_CA_BUNDLE:-}" >> "$STUB_LOG"
if [ -d "$ACME_ACCOUNTS/ca.test:14000/dir/forgotten" ]; then
    echo "An unexpected error occurred:"
    echo "AttributeError: can't set attribute"
    exit 1
fi
if [ -e "$STUB_TMP/ca-down" ]; then
    echo "Saving debug log to /var/log/letsencrypt/letsencrypt.log"
    echo "Certbot failed to authenticate some domains (authenticator: webroot)."
    echo "  Domain: new.example.org"
    echo "  Detail: DNS problem: NXDOMAIN looking up A for new.example.org" >&2
    exit 1
fi
""",
}


def make_cert(path: Path, cn: str = "a.example.org") -> str:
    """A self-signed EC certificate and key as fullchain.pem + privkey.pem in PATH; its serial."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", f"/CN={cn}", "-keyout", str(path / "privkey.pem"),
                    "-out", str(path / "fullchain.pem")], check=True, capture_output=True)
    out = subprocess.run(["/usr/bin/openssl", "x509", "-in", str(path / "fullchain.pem"), "-noout", "-serial"],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().removeprefix("serial=")


@pytest.fixture
def acme_env(tmp_path):
    return stubbed(tmp_path, ACME_STUBS, "acme-bin", STUB_TMP=str(tmp_path), ACME_ACCOUNTS=str(tmp_path / "accounts"))


def test_acme_install_puts_a_whole_pair_live_by_one_link_switch(acme_env, tmp_path):
    dest = tmp_path / "ssl" / "sseapp-acme"
    first = make_cert(tmp_path / "lineage")
    result = run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest)
    assert result.returncode == 0, result.stderr
    assert os.readlink(dest / "live") == first
    assert stat.S_IMODE((dest / first / "privkey.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert (dest / "live" / "fullchain.pem").read_bytes() == (tmp_path / "lineage" / "fullchain.pem").read_bytes()
    assert calls(acme_env, "nginx") == ["nginx -t"]
    assert not calls(acme_env, "systemctl")  # install never reloads: the deploy's one reload does
    # Again with the same lineage: nothing to do, nothing tested.
    again = run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest)
    assert again.returncode == 0 and f"certificate {first} is live" in again.stdout
    assert calls(acme_env, "nginx") == ["nginx -t"]
    # A renewal keeps the pair before it (a failed renewal goes back to it) and no older one.
    second = make_cert(tmp_path / "lineage")
    assert run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest).returncode == 0
    third = make_cert(tmp_path / "lineage")
    assert run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest).returncode == 0
    assert os.readlink(dest / "live") == third
    assert sorted(p.name for p in dest.iterdir()) == sorted([second, third, "live"])


def test_acme_install_refused_by_nginx_puts_the_previous_certificate_back(acme_env, tmp_path):
    dest = tmp_path / "ssl" / "sseapp-acme"
    first = make_cert(tmp_path / "lineage")
    assert run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest).returncode == 0
    second = make_cert(tmp_path / "lineage")
    (tmp_path / "nginx-refuses").touch()
    result = run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest)
    assert result.returncode == 1
    assert f"nginx -t refused certificate {second}; the previous one ({first}) is back" in result.stderr
    assert "key values mismatch" in result.stderr
    assert os.readlink(dest / "live") == first


@pytest.mark.parametrize("point", ["1", "2", "3"])
def test_acme_install_cut_at_any_point_leaves_live_whole_and_the_next_run_converges(acme_env, tmp_path, point):
    dest = tmp_path / "ssl" / "sseapp-acme"
    first = make_cert(tmp_path / "lineage")
    assert run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest).returncode == 0
    second = make_cert(tmp_path / "lineage")
    assert killed(run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest, fault=point))
    assert os.readlink(dest / "live") in (first, second)
    for name in ("fullchain.pem", "privkey.pem"):
        assert (dest / "live" / name).is_file()  # whichever pair it names is whole
    result = run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest)
    assert result.returncode == 0, result.stderr
    assert os.readlink(dest / "live") == second and not (dest / ".new").exists()


def test_acme_renew_reloads_and_proves_the_new_serial_is_served(acme_env, tmp_path):
    dest = tmp_path / "ssl" / "sseapp-acme"
    make_cert(tmp_path / "lineage")
    assert run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest).returncode == 0
    second = make_cert(tmp_path / "lineage")
    env = {**acme_env, "STUB_SERVED": str(dest / "live" / "fullchain.pem")}  # nginx serves what is live
    result = run(env, "acme-cert.sh", "renew", tmp_path / "lineage", dest, 443, "a.example.org", 5)
    assert result.returncode == 0, result.stderr
    assert calls(env, "systemctl") == ["systemctl reload nginx"]
    assert calls(env, "openssl s_client") == ["openssl s_client -connect 127.0.0.1:443 -servername a.example.org"]
    assert os.readlink(dest / "live") == second


def test_acme_renew_not_served_in_time_goes_back_to_the_previous_certificate(acme_env, tmp_path):
    dest = tmp_path / "ssl" / "sseapp-acme"
    first = make_cert(tmp_path / "lineage")
    assert run(acme_env, "acme-cert.sh", "install", tmp_path / "lineage", dest).returncode == 0
    shutil.copy(dest / first / "fullchain.pem", tmp_path / "old.pem")
    second = make_cert(tmp_path / "lineage")
    env = {**acme_env, "STUB_SERVED": str(tmp_path / "old.pem")}  # nginx keeps serving the old one
    result = run(env, "acme-cert.sh", "renew", tmp_path / "lineage", dest, 443, "a.example.org", 1)
    assert result.returncode == 1
    assert (f"nginx does not serve certificate {second} for a.example.org on port 443 1 s after the reload "
            f"(it serves: {first})") in result.stderr
    assert os.readlink(dest / "live") == first
    assert calls(env, "systemctl") == ["systemctl reload nginx", "systemctl reload nginx"]


def test_acme_issue_asks_certbot_for_exactly_the_names_and_fails_with_the_cas_reason(acme_env, tmp_path):
    from ssedeploy import acme

    settings = parse({"site": {"server_names": ["a.example.org", "new.example.org"],
                               "tls": {"mode": "acme", "email": "ops@example.org",
                                       "directory": "https://ca.test:14000/dir",
                                       "directory_ca": str(make_cert(tmp_path / "ca") and tmp_path / "ca" / "fullchain.pem")}}})
    args = acme.issue_command(settings)[1:]
    args[1] = str(tmp_path / "webroot")  # the host's webroot, here
    ok = run(acme_env, "acme-cert.sh", *args)
    assert ok.returncode == 0, ok.stderr
    (line,) = calls(acme_env, "certbot")
    assert ("certonly --non-interactive --agree-tos --email ops@example.org --server https://ca.test:14000/dir "
            f"--webroot -w {tmp_path / 'webroot'} --cert-name sseapp --keep-until-expiring "
            "-d a.example.org -d new.example.org") in line
    assert line.endswith(f"CA_BUNDLE={acme.DIRECTORY_CA}")
    (tmp_path / "ca-down").touch()
    failed = run(acme_env, "acme-cert.sh", *args)
    assert failed.returncode == 1
    assert ("the ACME CA https://ca.test:14000/dir did not issue a certificate for a.example.org new.example.org"
            in failed.stderr)
    assert "Detail: DNS problem: NXDOMAIN looking up A for new.example.org" in failed.stderr
    assert "Saving debug log" not in failed.stderr


def test_the_renewal_hook_acts_on_its_own_lineage_only(acme_env, tmp_path):
    from ssedeploy import acme

    settings = parse({"site": {"server_names": ["a.example.org"], "tls": {"mode": "acme", "email": "o@example.org"}}})
    hook = tmp_path / "hook"
    hook.write_text(acme.renew_hook(settings).replace(acme.SCRIPT, str(tmp_path / "acme-cert.sh")))
    (tmp_path / "acme-cert.sh").write_text('#!/bin/sh\necho "acme-cert.sh $*" >> "$STUB_LOG"\n')
    (tmp_path / "acme-cert.sh").chmod(0o755)
    other = subprocess.run(["/bin/sh", str(hook)], env={**acme_env, "RENEWED_LINEAGE": "/etc/letsencrypt/live/other"})
    assert other.returncode == 0 and not calls(acme_env, "acme-cert.sh")
    ours = subprocess.run(["/bin/sh", str(hook)], env={**acme_env, "RENEWED_LINEAGE": acme.lineage_dir(settings)})
    assert ours.returncode == 0
    assert calls(acme_env, "acme-cert.sh") == [
        f"acme-cert.sh renew /etc/letsencrypt/live/sseapp /etc/ssl/ssedeploy/sseapp-acme 443 a.example.org "
        f"{acme.SERVED_TIMEOUT}"]


def test_acme_issue_registers_anew_once_when_the_ca_forgot_the_account(acme_env, tmp_path):
    from ssedeploy import acme

    settings = parse({"site": {"server_names": ["a.example.org"], "tls": {
        "mode": "acme", "email": "ops@example.org", "directory": "https://ca.test:14000/dir"}}})
    args = acme.issue_command(settings)[1:]
    args[1] = str(tmp_path / "webroot")
    (tmp_path / "accounts" / "ca.test:14000" / "dir" / "forgotten").mkdir(parents=True)
    (tmp_path / "accounts" / "other.test" / "directory" / "kept").mkdir(parents=True)
    result = run(acme_env, "acme-cert.sh", *args)
    assert result.returncode == 0, result.stderr
    assert len(calls(acme_env, "certbot")) == 2
    assert not (tmp_path / "accounts" / "ca.test:14000").exists()
    assert (tmp_path / "accounts" / "other.test" / "directory" / "kept").is_dir()  # another CA's account stays


# -- app-release.sh on a cluster's app host: --hold, then --drain ---------------------------------------
# The same World, seen as a cluster's app host: its AppInstances fact reads the port it recorded (`live`),
# never an nginx (the proxies are other hosts), and app_live holds (no switch, no drain) until app_drain.
# Its nginx files stay as they were: nothing of a held release touches them.

def as_cluster_app_host(world: World) -> World:
    """WORLD's fact read as on a cluster's app host (cluster=True); `live` records the port A serves at."""
    def found() -> HostInstances:
        command = AppInstances().command(app=APP, app_dir=app_dir(SETTINGS), ports=PORTS,
                                         revision_port=SETTINGS.site.revision_port, cluster=True)
        assert UPSTREAM_PATH not in command and NGINX_LIVE not in command
        out = subprocess.run(world.here(command), shell=True, env={**world.env, "STUB_LOG": os.devnull},
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return parse_instances(out.stdout.splitlines())

    world.found = found
    (world.dir / "live").write_text(f"{LIVE_PORT}\n")
    return world


@pytest.fixture
def app_host(world):
    return as_cluster_app_host(world)


def held(world: World, target: str = "B", fault: str | None = None):
    """app_live with hold: (the script's arguments, its result), or None when nothing is owed."""
    result = world.live(target, fault, hold=True)
    return None if result is None else (world.last_args, result)


def drained(world: World, fault: str | None = None):
    """app_drain: (its command, the result), or None when there is nothing to drain."""
    commands, noops = world.operation(app_ops.app_drain, SETTINGS)
    if not commands:
        assert noops == ["nothing to drain"]
        return None
    (command,) = commands
    words = shlex.split(command)
    assert words[:3] == ["/bin/sh", f"{STATE}/app-release.sh", "--drain"]
    return words, run(world.env, "app-release.sh", *map(world.here, words[2:]), fault=fault)


def live_file(world: World) -> str | None:
    path = world.dir / "live"
    return path.read_text() if path.exists() else None


def test_app_live_with_hold_asks_for_no_nginx_switch(app_host):
    args, result = held(app_host)
    assert result.returncode == 0, result.stderr
    assert args[0] == "--hold"
    # --hold APP_DIR RELEASE IDLE IDLE_UNIT IDLE_TIMER OLD_UNIT OLD_TIMER DRAIN KEEP NODE_ROOT NGINX FETCH CHECK...
    assert args[1:4] == [app_dir(SETTINGS), "B", str(IDLE_PORT)]
    assert args[6] == unit_name(APP, LIVE_PORT)
    assert args[11:13] == ["-", "-"]
    assert not [p for p in app_host.nginx.state.iterdir() if p.name.startswith("stage-")]  # nothing staged


def test_a_held_release_starts_checks_and_records_the_idle_instance_and_leaves_the_old_one_serving(app_host):
    world = app_host
    args, result = held(world)
    assert result.returncode == 0, result.stderr
    idle, old = unit_name(APP, IDLE_PORT), unit_name(APP, LIVE_PORT)
    idle_drain = drain_name(APP, IDLE_PORT)
    log = Path(world.env["STUB_LOG"]).read_text().splitlines()
    assert [line for line in log if not line.startswith("systemctl show")] == [
        f"systemctl stop {idle_drain}.timer {idle_drain}.service",
        f"systemctl stop {idle}",
        f"systemctl reset-failed {idle}",
        f"systemctl start {idle}",
        f"node:releases/B/{NODE_LINK}/bin/node {world.check_js} 127.0.0.1 {IDLE_PORT} /healthz {CHECK_SECONDS} /api/stream",
        f"check passed {IDLE_PORT} B",
        f"systemctl enable --quiet {idle}",
        f"systemctl disable --quiet {old}",   # 4. recorded; and that is all: no drain, no prune
    ]
    assert live_file(world) == f"{IDLE_PORT}\n" and not (world.dir / "live.new").exists()
    assert (world.link("current"), world.link("previous")) == ("releases/B", "releases/A")
    assert world.history() == [*HISTORY, ("B", IDLE_PORT)]
    # Both instances run: the old one serves every proxy until they switch; nothing drains it yet.
    assert world.instances() == {IDLE_PORT: ("active", True, "B", "../releases/B"),
                                 LIVE_PORT: ("active", False, "A", "../releases/A")}
    assert not world.timers() and not calls(world.env, "systemd-run") and not touches(world.env, old)
    assert world.releases() == sorted(World.AGES) and world.bookkeeping()["node"] == [OLD_NODE_HOME, NODE_HOME]
    assert not world.leftovers()
    # This host's nginx (a proxy's, elsewhere) was not touched.
    assert not calls(world.env, "nginx") and snapshot(world.nginx.live) == world.tree
    assert world.upstream() == f"{rev(LIVE_PORT)} {LIVE_PORT}"
    # The run reads the recorded port: B is live there, nothing more is owed.
    assert live_port(world.found(), PORTS) == IDLE_PORT and world.serving() == "B"
    assert held(world) is None


def test_drain_after_a_held_release_drains_as_a_release_does_and_prunes(app_host, tmp_path_factory):
    world = app_host
    _, essentials, bookkeeping = reference("good", world.env, tmp_path_factory)
    assert held(world)[1].returncode == 0
    Path(world.env["STUB_LOG"]).unlink()
    old, old_drain = unit_name(APP, LIVE_PORT), drain_name(APP, LIVE_PORT)
    words, result = drained(world)
    assert result.returncode == 0, result.stderr
    assert words[3:] == [app_dir(SETTINGS), old, old_drain, str(SETTINGS.app.drain_seconds),
                         str(SETTINGS.app.keep_releases), node_root(SETTINGS)]
    # Exactly step 5 of a release that is not held.
    assert Path(world.env["STUB_LOG"]).read_text().splitlines() == [
        f"systemctl stop {old_drain}.timer {old_drain}.service",
        f"systemctl reset-failed {old_drain}.timer {old_drain}.service",
        f"systemd-run --quiet --unit={old_drain} --on-active={SETTINGS.app.drain_seconds} "
        f"--timer-property=AccuracySec=100ms systemctl stop {old}",
    ]
    assert world.timers() == {old_drain: [str(SETTINGS.app.drain_seconds), f"systemctl stop {old}"]}
    assert world.found().instances[LIVE_PORT].draining
    # Pruned beyond keep_releases (2) as a release is: Z and the Node build only Z ran go.
    assert world.releases() == ["A", "B", "BAD"] and world.bookkeeping()["node"] == [NODE_HOME]
    assert drained(world) is None  # the old one drains already
    assert world.settle() == []
    world.drains_end()
    # Where the single host's uninterrupted release ends, nginx aside.
    assert world.instances() == essentials["instances"] and world.timers() == essentials["timers"] == {}
    assert world.link("current") == essentials["current"] and world.bookkeeping() == bookkeeping
    assert live_file(world) == f"{IDLE_PORT}\n"
    assert drained(world) is None and held(world) is None


def test_drain_with_no_old_unit_only_prunes(app_host):
    world = app_host
    assert held(world)[1].returncode == 0
    Path(world.env["STUB_LOG"]).unlink()
    result = run(world.env, "app-release.sh", "--drain", world.dir, "-", drain_name(APP, None),
                 SETTINGS.app.drain_seconds, 2, world.node_root)
    assert result.returncode == 0, result.stderr
    assert not Path(world.env["STUB_LOG"]).exists()  # no systemctl, no systemd-run: nothing stopped or drained
    assert not world.timers()
    assert world.instances()[LIVE_PORT] == ("active", False, "A", "../releases/A")
    assert world.releases() == ["A", "B", "BAD"] and world.bookkeeping()["node"] == [NODE_HOME]
    assert not world.leftovers()


@pytest.mark.parametrize("mode", ["kill", "fail"])
def test_a_held_release_cut_after_recording_leaves_live_whole_and_the_next_run_converges(
        app_host, tmp_path_factory, mode):
    world = app_host
    _, essentials, bookkeeping = reference("good", world.env, tmp_path_factory)
    _, result = held(world, fault="12" if mode == "kill" else "12:fail")
    if mode == "kill":
        assert killed(result), result.stderr
    else:
        assert result.returncode == 1 and "fault injected at point 12" in result.stderr, result.stderr
    assert live_file(world) == f"{IDLE_PORT}\n" and not (world.dir / "live.new").exists()
    assert world.serving() == "B"
    assert world.instances()[LIVE_PORT] == ("active", False, "A", "../releases/A")  # still serves the proxies
    assert not touches(world.env, unit_name(APP, LIVE_PORT))
    # The next run: nothing owed (B recorded live), the proxies switch, the old instance drains, settled.
    assert held(world) is None
    assert drained(world)[1].returncode == 0
    assert world.settle() == []
    world.drains_end()
    assert world.instances() == essentials["instances"] and world.link("current") == essentials["current"]
    assert world.bookkeeping() == bookkeeping and not world.timers()
    assert drained(world) is None and held(world) is None
