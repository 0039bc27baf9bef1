"""A cluster over the local sandbox: 2 proxies (nginx) in front of 3 app hosts, on a running sandbox instance of
5 hosts ($SSEDEPLOY_SANDBOX, default `cluster`):

    ssedeploy sandbox up -n 5 --name cluster
    SSEDEPLOY_SANDBOX=cluster pyinfra -y inventories/sandbox_cluster.py deploy.py

Each app host's app listens on its own address on the sandbox bridge (app.bind), which only the proxies may
reach; the proxies' upstream lists all three (README: More than one server).
"""

from ssedeploy import sandbox
from ssedeploy.inventory import sandbox_hosts

hosts = sandbox_hosts(sandbox.current_name("cluster"))
if len(hosts) < 5:
    raise SystemExit(f"inventories/sandbox_cluster.py needs 5 running sandbox hosts, found {len(hosts)}: "
                     "run `ssedeploy sandbox up -n 5 --name cluster`")
proxies = hosts[:2]
apps = [(name, {**data, "app": {"bind": data["ssh_hostname"]}}) for name, data in hosts[2:5]]
