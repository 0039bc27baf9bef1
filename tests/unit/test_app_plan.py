"""When the app role restarts the app: a note left on the host, unit or environment file contents."""

import pytest

from roles.app import RestartPlan, restart_plan

UNIT, ENV = "/etc/systemd/system/sseapp.service", "/etc/sseapp/env"
U1, U2, E1, E2 = "u1", "u2", "e1", "e2"  # sha256 digests, shortened

NONE = RestartPlan(pending=False, mark=False, restart=False)
MARK_AND_RESTART = RestartPlan(pending=True, mark=True, restart=True)
MARK_ONLY = RestartPlan(pending=True, mark=True, restart=False)  # the release going live restarted it
RESTART_NOTED = RestartPlan(pending=True, mark=False, restart=True)
NOTED_BUT_LIVE = RestartPlan(pending=True, mark=False, restart=False)


@pytest.mark.parametrize("marker,on_host,wanted,went_live,want", [
    # note on host  files on the host            files this run writes       release went live
    (False, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E1}, False, NONE),            # nothing differs
    (False, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E1}, True, NONE),             # a new release only
    (False, {UNIT: U1, ENV: E1}, {UNIT: U2, ENV: E1}, False, MARK_AND_RESTART),  # the unit changes
    (False, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E2}, False, MARK_AND_RESTART),  # the environment changes
    (False, {UNIT: U1, ENV: E1}, {UNIT: U2, ENV: E2}, True, MARK_ONLY),
    (False, {UNIT: None, ENV: None}, {UNIT: U1, ENV: E1}, False, MARK_AND_RESTART),  # a fresh host
    (False, {UNIT: U1, ENV: None}, {UNIT: U1, ENV: E1}, False, MARK_AND_RESTART),    # the env file is gone
    (True, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E1}, False, RESTART_NOTED),    # a run died before restarting
    (True, {UNIT: U1, ENV: E1}, {UNIT: U2, ENV: E1}, False, RESTART_NOTED),    # noted already: not again
    (True, {UNIT: U1, ENV: E1}, {UNIT: U1, ENV: E1}, True, NOTED_BUT_LIVE),
    (False, {UNIT: U1, ENV: E1}, {UNIT: U1}, False, NONE),                     # drift: env not managed
    (False, {UNIT: U1, ENV: None}, {UNIT: U1}, False, NONE),
])
def test_restart_plan(marker, on_host, wanted, went_live, want):
    assert restart_plan(marker=marker, on_host=on_host, wanted=wanted, went_live=went_live) == want
