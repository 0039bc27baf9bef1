"""The host-side scripts, run without root against temporary trees with stub nginx, systemctl, node and
logger first on PATH: every failed command fails the step, and a kill at any fault point leaves a state
the next run converges from."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from roles.nginx import served_revision_check
from ssedeploy.deploy_lock import BUSY, holder_command
from ssedeploy.operations import SCRIPTS
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


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "stub.log"),
            "STUB_APP_DIR": str(tmp_path / "app")}


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


# -- app-activate.sh --------------------------------------------------------------------------------

class App:
    """An app directory with whole releases (each holds its name), `current` and `previous`."""

    AGES = {"Z": 1000, "A": 2000, "BAD": 3000, "B": 4000}  # mtimes: pruning keeps the newest

    def __init__(self, root: Path, first: bool = False):
        self.dir, self.check_js = root / "app", root / "state" / "app-check.js"
        self.check_js.parent.mkdir()
        self.check_js.write_text("// stub: node is a stub too\n")
        for name in ["BAD"] if first else self.AGES:
            release = self.dir / "releases" / name
            release.mkdir(parents=True)
            (release / "id").write_text(name)
            if name == "BAD":
                (release / "bad").write_text("fails its check\n")
            os.utime(release, (self.AGES[name], self.AGES[name]))
        if not first:
            (self.dir / "current").symlink_to("releases/A")
            (self.dir / "previous").symlink_to("releases/Z")

    def activate(self, env, target: str, fault: str | None = None, keep: int = 2):
        return run({**env, "STUB_APP_DIR": str(self.dir)}, "app-activate.sh", self.dir, "sseapp.service", target,
                   keep, 3000, "/healthz", "/api/stream", self.check_js, fault=fault)

    def link(self, name: str) -> str | None:
        path = self.dir / name
        return os.readlink(path) if path.is_symlink() else None

    def state(self) -> tuple:
        """What a run leaves: the links, the visible releases, and any leftovers."""
        return (self.link("current"), self.link("previous"), sorted(os.listdir(self.dir / "releases")),
                sorted(p for p in os.listdir(self.dir) if p not in ("current", "previous", "releases")))


def app_reference(tmp_path_factory, env, scenario: str):
    """The state a run that nobody interrupts leaves, on a fresh app directory."""
    app = App(tmp_path_factory.mktemp("reference"), first=scenario == "first-bad")
    result = app.activate(env, TARGETS[scenario])
    return result.returncode, app.state()


TARGETS = {"good": "B", "bad": "BAD", "first-bad": "BAD", "recover": "B"}


def test_activate_switches_restarts_checks_and_prunes(tmp_path, env):
    app = App(tmp_path)
    result = app.activate(env, "B")
    assert result.returncode == 0, result.stderr
    # Z is pruned (keep 2: B and BAD are newest); A stays as the previous release.
    assert app.state() == ("releases/B", "releases/A", ["A", "B", "BAD"], [])
    assert calls(env, "systemctl") == ["systemctl restart sseapp.service current=releases/B"]
    assert calls(env, "node") == [f"node {app.check_js} 3000 /healthz /api/stream 30"]


def test_activate_switches_back_when_the_check_fails(tmp_path, env):
    app = App(tmp_path)
    result = app.activate(env, "BAD")
    assert result.returncode == 1
    assert "releases/BAD failed its check: switched back to releases/A" in result.stderr
    assert "and it passes its check" in result.stderr
    assert app.state() == ("releases/A", "releases/BAD", ["A", "B", "BAD", "Z"], [])
    assert calls(env, "systemctl") == ["systemctl restart sseapp.service current=releases/BAD",
                                       "systemctl restart sseapp.service current=releases/A"]


def test_rollback_makes_the_previous_release_live(tmp_path, env):
    app = App(tmp_path)
    assert app.activate(env, "--previous").returncode == 0
    assert app.state()[:2] == ("releases/Z", "releases/A")


def test_activate_refuses_a_release_that_is_not_on_the_host(tmp_path, env):
    app = App(tmp_path)
    result = app.activate(env, "NOPE")
    assert result.returncode == 1 and "releases/NOPE is not on the host" in result.stderr
    assert app.state() == ("releases/A", "releases/Z", ["A", "B", "BAD", "Z"], [])
    assert not calls(env, "systemctl")


APP_POINTS = {
    1: "recover", 2: "recover", 3: "recover", 4: "recover",   # putting the links back
    5: "good", 6: "good", 7: "good", 8: "good", 9: "good",   # journal, links switched
    10: "good", 11: "good", 12: "good",                      # checked; journal dropped; pruning
    13: "bad", 14: "bad", 15: "bad", 16: "bad", 17: "bad",   # the check failed: switch back
    18: "first-bad",                                         # ... with nothing to switch back to
}


def start_activate(app, env, scenario: str, fault: str):
    if scenario == "recover":  # an earlier run killed with `current` switched and nothing restarted
        assert killed(app.activate(env, "B", fault="7"))
        assert app.link("current") == "releases/B" and (app.dir / "activate-in-progress").exists()
    return app.activate(env, TARGETS[scenario], fault=fault)


def assert_whole_release_live(app):
    current = app.link("current")
    if current is not None:
        name = current.removeprefix("releases/")
        assert (app.dir / current / "id").read_text() == name, "current names a release that is not whole"
    for name in os.listdir(app.dir / "releases"):
        if not name.startswith(".pruning-"):
            assert (app.dir / "releases" / name / "id").read_text() == name


def assert_app_converges(app, env, scenario, tmp_path_factory):
    status, state = app_reference(tmp_path_factory, env, scenario)
    Path(env["STUB_LOG"]).unlink()
    result = app.activate(env, TARGETS[scenario])
    assert (result.returncode, app.state()) == (status, state), result.stderr
    if state[0]:  # the unit was last restarted on what is live now, and that passed its check
        assert calls(env, "systemctl")[-1].endswith(f"current={state[0]}")
        assert calls(env, "check")[-1] == "check passed"


@pytest.mark.parametrize("point", sorted(APP_POINTS))
@pytest.mark.parametrize("mode", ["kill", "fail"])
def test_activate_cut_at_each_point_keeps_a_whole_release_live_and_the_next_run_converges(
        tmp_path, tmp_path_factory, env, point, mode):
    scenario = APP_POINTS[point]
    app = App(tmp_path, first=scenario == "first-bad")
    result = start_activate(app, env, scenario, str(point) if mode == "kill" else f"{point}:fail")
    if mode == "kill":
        assert killed(result), f"point {point} not reached"
    else:
        assert result.returncode == 1 and f"fault injected at point {point}" in result.stderr
    assert_whole_release_live(app)
    assert_app_converges(app, env, scenario, tmp_path_factory)


@pytest.mark.parametrize("scenario", sorted(set(APP_POINTS.values())))
def test_activate_has_no_fault_point_beyond_the_table(tmp_path, env, scenario):
    app = App(tmp_path, first=scenario == "first-bad")
    assert not killed(start_activate(app, env, scenario, str(max(APP_POINTS) + 1)))


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
