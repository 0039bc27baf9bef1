"""The deploy lock's timing contract (the lock itself runs in tests/unit/test_scripts.py and on hosts)."""

from ssedeploy import deploy_lock


def test_a_dead_connection_fails_the_run_before_the_host_lets_another_run_in():
    # The controller gives up on a silent host after DEAD_AFTER s; the host frees the lock after LEASE s
    # without a keepalive. The other way round, two runs could hold a host at once.
    assert deploy_lock.KEEPALIVE < deploy_lock.DEAD_AFTER < deploy_lock.LEASE
