"""The run results (ssedeploy/run_results.py) from a real pyinfra State on this machine's @local
connector, drift's reading of them, and the e2e accessor that fails for an operation that did not run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pyinfra import host
from pyinfra.api import Config, Inventory, State, operation
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.operations import server

from ssedeploy import run_results, verify
from ssedeploy.operations import report_differences
from ssedeploy.run_results import RunResults, note, record_run
from tests.e2e.helpers import Results


@operation()
def present(path: str):
    """A file that exists (made with `touch`); names it while it is missing, as ssedeploy's operations do."""
    if os.path.exists(path):
        host.noop(f"{path} exists")
        return
    report_differences([path])
    yield f"touch {path}"


def local_state(check_for_changes: bool = True) -> State:
    state = State(Inventory((["@local"], {})), Config(), check_for_changes=check_for_changes)
    connect_all(state)
    return state


def finish(state: State, execute: bool = True) -> None:
    """Execute (unless dry) and disconnect, as pyinfra's CLI does, also after a failure."""
    try:
        if execute:
            run_ops(state)
    except PyinfraError:  # "No hosts remaining!": the only host failed
        pass
    finally:
        disconnect_all(state)


@pytest.fixture
def out(tmp_path, monkeypatch):
    path = tmp_path / "results" / "run.json"
    monkeypatch.setenv("SSEDEPLOY_RESULTS", str(path))
    return path


def one_new_one_old(tmp_path) -> tuple[State, Path]:
    """A recorded run on @local whose first operation makes a new file and whose second finds one there."""
    new, old = tmp_path / "new", tmp_path / "old"
    old.touch()
    state = local_state()
    record_run(state)
    add_op(state, present, name="make new", path=str(new))
    add_op(state, present, name="make old", path=str(old))
    return state, new


def ops(data: dict, name: str = "@local") -> list[tuple[str, str, list[str]]]:
    return [(o["name"], o["result"], o["files"]) for o in data["hosts"][name]["operations"]]


def test_a_run_records_changed_and_no_change_with_the_files_named_in_op_order(out, tmp_path):
    state, new = one_new_one_old(tmp_path)
    add_op(state, server.shell, name="say hi", commands=["true"])
    finish(state)
    data = json.loads(out.read_text())
    assert data["format"] == 1 and data["executed"] is True
    assert ops(data) == [("make new", "changed", [str(new)]), ("make old", "no change", []), ("say hi", "changed", [])]
    assert data["hosts"]["@local"]["failed_at"] is None and data["failed_hosts"] == {}
    assert new.exists()


def test_a_failed_operation_names_the_host_and_what_came_after_did_not_run(out, caplog):
    state = local_state()
    record_run(state)
    add_op(state, server.shell, name="fine", commands=["true"])
    add_op(state, server.shell, name="breaks", commands=["false"])
    add_op(state, server.shell, name="after", commands=["true"])
    finish(state)
    data = json.loads(out.read_text())
    assert [(name, result) for name, result, _ in ops(data)] == [
        ("fine", "changed"), ("breaks", "failed"), ("after", "not run")]
    assert data["hosts"]["@local"]["failed_at"] == "breaks" and data["failed_hosts"] == {"@local": "breaks"}
    assert "--> @local FAILED at: breaks" in caplog.text


def test_a_failed_operation_records_what_its_commands_wrote_to_stderr(out):
    """The host-side scripts' reasons (e.g. the CA's refusal) reach programs through the results, not the console."""
    state = local_state()
    record_run(state)
    add_op(state, server.shell, name="fine", commands=["echo quiet >&2"])
    add_op(state, server.shell, name="breaks", commands=["seq 1 50 >&2; echo 'ssedeploy: the CA said no' >&2; false"])
    finish(state)
    data = json.loads(out.read_text())
    fine, breaks = data["hosts"]["@local"]["operations"]
    assert "error" not in fine  # only a failed operation's
    assert breaks["error"][-1] == "ssedeploy: the CA said no" and len(breaks["error"]) == run_results.ERROR_LINES
    assert Results(data).error("@local").endswith("ssedeploy: the CA said no")


def test_a_dry_run_says_what_would_change_and_names_files_without_touching_anything(out, tmp_path):
    state, new = one_new_one_old(tmp_path)
    add_op(state, server.shell, name="if needed", commands=["true"], _if=lambda: True)
    note(state.inventory.get_host("@local"), "skipped in drift mode: the release")
    finish(state, execute=False)
    data = json.loads(out.read_text())
    assert data["executed"] is False
    assert ops(data) == [("make new", "would change", [str(new)]), ("make old", "no change", []),
                         ("if needed", "may change", [])]
    assert data["hosts"]["@local"]["notes"] == ["skipped in drift mode: the release"]
    assert not new.exists()
    assert run_results.changes(data) == [("@local", data["hosts"]["@local"]["operations"][0])]


def test_without_change_detection_files_are_named_while_executing(out, tmp_path):
    """`pyinfra -y` plans without running operations: they name their files when they execute."""
    new = tmp_path / "new"
    state = local_state(check_for_changes=False)
    record_run(state)
    add_op(state, present, name="make new", path=str(new))
    finish(state)
    assert ops(json.loads(out.read_text())) == [("make new", "changed", [str(new)])]


def test_files_named_while_planning_are_replaced_by_what_the_execution_names(out, tmp_path):
    new = tmp_path / "new"
    state = local_state()
    record_run(state)
    add_op(state, present, name="make new", path=str(new))
    new.touch()  # made by someone else between planning and executing: nothing left to do
    finish(state)
    assert ops(json.loads(out.read_text())) == [("make new", "no change", [])]


def test_record_run_installs_one_callback_and_notes_made_twice_are_kept_once(out):
    state = local_state()
    first = record_run(state)
    assert record_run(state) is first
    assert [h for h in state.callback_handlers if isinstance(h, RunResults)] == [first]
    local = state.inventory.get_host("@local")
    note(local, "skipped in drift mode: x")
    note(local, "skipped in drift mode: x")
    finish(state)
    assert json.loads(out.read_text())["hosts"]["@local"]["notes"] == ["skipped in drift mode: x"]


def test_default_path_is_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SSEDEPLOY_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert RunResults().path == tmp_path / ".ssedeploy" / "last-run.json"


def test_the_file_is_replaced_whole_through_a_temporary_file_in_the_same_directory(out, monkeypatch):
    state = local_state()
    record_run(state)
    add_op(state, server.shell, name="say hi", commands=["true"])
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        renames.append((os.path.dirname(src), os.path.basename(src), str(dst)))
        assert json.loads(open(src).read())["format"] == 1  # whole before it takes the name
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    finish(state)
    assert renames and all(d == str(out.parent) and name != out.name and dst == str(out)
                           for d, name, dst in renames)
    assert sorted(os.listdir(out.parent)) == [out.name]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_file(out, monkeypatch):
    out.parent.mkdir(parents=True)
    out.write_text('{"previous": true}\n')
    state = local_state()
    handler = record_run(state)

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        handler.write(state)
    assert out.read_text() == '{"previous": true}\n' and os.listdir(out.parent) == [out.name]


# -- reading: drift and the e2e accessor ------------------------------------------------------

def results(**hosts) -> dict:
    return {"format": 1, "executed": False, "failed_hosts": {}, "hosts": {
        name: {"operations": [{"name": n, "result": r, "files": f} for n, r, f in operations],
               "notes": [], "facts": {}, "failed_at": None} for name, operations in hosts.items()}}


CONFIG = "nginx | nginx config (staged, tested, swapped)"
SITE = "/etc/nginx/sites-available/ssedeploy.conf"


@pytest.fixture
def dry(monkeypatch):
    """drift with a fake pyinfra that writes `dry.data` (or nothing) where SSEDEPLOY_RESULTS says, and
    verify returning `dry.checks`."""

    class Dry:
        data: dict | None = None
        returncode = 0
        checks = 0
        env: dict = {}

    def fake_run(cmd, env=None, **kw):
        Dry.env = env
        assert "--dry" in cmd and env["SSEDEPLOY_DRIFT"] == "1"
        if Dry.data is not None:
            with open(env["SSEDEPLOY_RESULTS"], "w") as f:
                json.dump(Dry.data, f)
        return subprocess.CompletedProcess(cmd, Dry.returncode, "pyinfra's console text\n", "")

    monkeypatch.setattr(verify.subprocess, "run", fake_run)
    monkeypatch.setattr(verify, "verify", lambda *a, **kw: Dry.checks)
    return Dry


def test_drift_lists_each_operation_that_would_change_with_its_files_and_the_notes(dry, capsys):
    dry.data = results(**{
        "web-1": [("app | apt lists are fresh", "no change", []), (CONFIG, "would change", [SITE, "/etc/nginx/x"]),
                  ("nginx | Reload nginx gracefully", "may change", [])],
        "web-2": [(CONFIG, "no change", []), ("nginx | Reload nginx gracefully", "would change", [])],
    })
    dry.data["hosts"]["web-2"]["notes"] = ["skipped in drift mode: the release (no built app at /nowhere)"]
    assert verify.drift("inventory.py") == 1
    assert capsys.readouterr().out.splitlines() == [
        "[web-2] skipped in drift mode: the release (no built app at /nowhere)",
        "ssedeploy drift: a deploy would change:",
        f"  [web-1] {CONFIG}",
        f"  [web-1] differs: {SITE}, /etc/nginx/x",
        "  [web-2] nginx | Reload nginx gracefully",
    ]
    assert not os.path.exists(dry.env["SSEDEPLOY_RESULTS"]), "drift's results file outlived it"


def test_drift_with_nothing_to_change_exits_0_and_follows_verify(dry, capsys):
    dry.data = results(**{"web-1": [(CONFIG, "no change", []), ("nginx | Reload nginx gracefully", "may change", [])]})
    assert verify.drift("inventory.py") == 0
    assert capsys.readouterr().out == "ssedeploy drift: a deploy would change nothing\n"
    dry.checks = 1
    assert verify.drift("inventory.py") == 1
    dry.checks = 3
    assert verify.drift("inventory.py") == 3


@pytest.mark.parametrize("case", ["no file", "no host", "pyinfra failed", "executed", "not results"])
def test_a_dry_run_without_usable_results_is_an_error(dry, capsys, case):
    dry.data = {"no file": None, "no host": results(), "executed": dict(results(w=[]), executed=True),
                "not results": {"hello": 1}}.get(case, results(w=[]))
    dry.returncode = 1 if case == "pyinfra failed" else 0
    dry.checks = 0
    assert verify.drift("inventory.py") == 3
    err = capsys.readouterr().err
    assert "ssedeploy drift: the dry run failed" in err and "pyinfra's console text" in err


def test_drift_reads_what_a_real_dry_run_wrote(dry, out, tmp_path, capsys):
    state = local_state()
    record_run(state)
    add_op(state, present, name="nginx config", path=str(tmp_path / "site.conf"))
    note(state.inventory.get_host("@local"), "skipped in drift mode: secrets")
    finish(state, execute=False)
    dry.data = json.loads(out.read_text())
    assert verify.drift("inventory.py") == 1
    assert capsys.readouterr().out.splitlines() == [
        "[@local] skipped in drift mode: secrets", "ssedeploy drift: a deploy would change:",
        "  [@local] nginx config", f"  [@local] differs: {tmp_path / 'site.conf'}"]


def test_the_e2e_accessor_fails_for_an_operation_that_did_not_run():
    ran = Results(dict(results(**{"web-1": [("nginx | Reload nginx gracefully", "no change", []),
                                            ("nginx | Restart nginx", "not run", [])]}), executed=True))
    assert ran.of("web-1", "nginx | Reload nginx gracefully") == "no change"
    with pytest.raises(pytest.fail.Exception, match=r"'nginx \| Reload nginx' did not run on web-1.*\n"
                                                     r"  nginx \| Reload nginx gracefully: no change"):
        ran.of("web-1", "nginx | Reload nginx")  # renamed
    with pytest.raises(pytest.fail.Exception, match="did not run on web-1"):
        ran.of("web-1", "nginx | Restart nginx")  # after the host failed
    assert ran.planned("web-1", "nginx | Restart nginx") == "not run"
    with pytest.raises(pytest.fail.Exception, match="is not an operation of this run"):
        ran.planned("web-1", "nginx | Restart nginx gracefully")
    with pytest.raises(pytest.fail.Exception, match="host web-2 is not in the run's results"):
        ran.of("web-2", "nginx | Reload nginx gracefully")
    assert ran.ran() == [("web-1", "nginx | Reload nginx gracefully")]
    twice = Results(results(w=[("a", "changed", []), ("a", "no change", [])]))
    with pytest.raises(pytest.fail.Exception, match="ran twice"):
        twice.of("w", "a")


def test_the_e2e_accessor_fails_when_the_run_wrote_no_results(tmp_path):
    none = Results.read(tmp_path / "absent.json")
    assert not none.written and none.ran() == []
    with pytest.raises(pytest.fail.Exception, match="the run wrote no results"):
        none.of("web-1", "nginx | Reload nginx gracefully")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(pytest.fail.Exception, match="unreadable results"):
        Results.read(tmp_path / "bad.json")


def test_a_results_file_that_cannot_be_written_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SSEDEPLOY_RESULTS", str(blocker / "run.json"))  # under a file: no such directory
    state = local_state()
    record_run(state)
    finish(state)
    assert f"could not write the run's results to {blocker / 'run.json'}" in caplog.text


def test_a_host_that_could_not_connect_is_a_failed_host(out):
    dead = ("dead", {"ssh_hostname": "127.0.0.1", "ssh_port": 1, "ssh_connect_retries": 0})
    state = State(Inventory((["@local", dead], {})), Config(CONNECT_TIMEOUT=2), check_for_changes=True)
    connect_all(state)
    record_run(state)
    add_op(state, server.shell, name="say hi", commands=["true"])
    finish(state)
    data = json.loads(out.read_text())
    assert data["failed_hosts"] == {"dead": "could not connect"}
    assert data["hosts"]["dead"] == {"operations": [], "notes": [], "facts": {}, "failed_at": "could not connect"}
    assert ops(data) == [("say hi", "changed", [])]


def test_releases_print_per_host_newest_first_and_say_what_they_could_not_read():
    from ssedeploy.cli import releases_lines

    rows = [{"id": "b" * 16, "unpacked": 2, "made_live": "2026-12-01T10:00:00Z", "state": "live"},
            {"id": "a" * 16, "unpacked": 1, "made_live": "2026-11-30T10:00:00Z", "state": "previous"},
            {"id": "c" * 16, "unpacked": 3, "made_live": None, "state": ""}]
    data = {"hosts": {"web-1": {"facts": {"releases": rows}, "failed_at": None},
                      "web-2": {"facts": {"releases": []}, "failed_at": None},
                      "web-3": {"facts": {}, "failed_at": "could not connect"}}}
    assert releases_lines(data) == [
        "web-1: 3 release(s) kept",
        f"  {'b' * 16}  2026-12-01T10:00:00Z  live",
        f"  {'a' * 16}  2026-11-30T10:00:00Z  previous",
        f"  {'c' * 16}  never live",
        "web-2: 0 release(s) kept (none deployed yet)",
        "web-3: could not read its releases (could not connect)",
    ]
    assert releases_lines(data, 1)[:2] == ["web-1: 3 release(s) kept", f"  {'b' * 16}  2026-12-01T10:00:00Z  live"]
