"""ssedeploy's roles: one module per thing a host runs, each a pyinfra @deploy."""

# Real servers run unattended-upgrades right after first boot: apt waits for the dpkg lock.
APT_LOCK_WAIT = "-o DPkg::Lock::Timeout=300"
