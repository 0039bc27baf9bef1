"""What `ssedeploy releases INVENTORY` runs with pyinfra (dry, read-only): each host's kept releases, which
one nginx sends to and which is previous, into the run's results for the command to print."""

from pyinfra import host

from ssedeploy.facts import AppReleases
from ssedeploy.instances import live_port
from ssedeploy.operations.app import instances_on_host
from ssedeploy.paths import app_dir
from ssedeploy.run_results import record_run, report
from ssedeploy import cluster
from ssedeploy.sudo_check import check as check_sudo

topology = cluster.load(offline=True)
settings = cluster.settings_of(host.name)
record_run(host.state)
check_sudo(host)
found = instances_on_host(settings)
port = live_port(found, settings.app.instance_ports)
live = found.instances[port].release if port in found.instances else found.current
releases = host.get_fact(AppReleases, app_dir=app_dir(settings))
made_live = {release: when for when, release, _ in releases["history"]}  # the last time each went live
report(host, "releases", [
    {"id": r, "unpacked": unpacked, "made_live": made_live.get(r),
     "state": "live" if r == live else "previous" if r == found.previous else ""}
    for r, unpacked in sorted(releases["kept"].items(), key=lambda item: (made_live.get(item[0]) or "", item[1]),
                              reverse=True)
])
