"""Benchmark host for cases (c) and (d): the app as ssedeploy deploys it, behind the distro's nginx as shipped.

    SSEDEPLOY_BENCH_VARIANT=sse|plain SSEDEPLOY_SANDBOX=bench pyinfra -y INVENTORY bench/stock_deploy.py

The package's nginx.conf and nginx.service stay untouched (no LimitNOFILE drop-in); only the
default site is swapped for bench/nginx/stock-<variant>.conf. Host data `bench_variant` wins over the env.
The app role runs only on a host where no app instance runs yet (the first run: it goes live on port 3000,
where the stock sites proxy to): with no ssedeploy nginx to read the live instance from, a later run would
release the app again, and with nginx installed by then it would switch ssedeploy's nginx files in.
"""

import os
from pathlib import Path

from pyinfra import host
from pyinfra.operations import apt, files, systemd

from roles.app import app
from roles.node import node, runtime
from ssedeploy.operations.app import instances_on_host
from ssedeploy.settings import for_host

SITES = Path(__file__).resolve().parent / "nginx"
variant = host.data.get("bench_variant") or os.environ.get("SSEDEPLOY_BENCH_VARIANT", "sse")
if variant not in ("sse", "plain"):
    raise ValueError(f"bench variant must be 'sse' or 'plain', not {variant!r}")

settings = for_host(host)
if not any(instance.running for instance in instances_on_host(settings).instances.values()):
    node_runtime = runtime(settings)
    node(settings, node_runtime)
    app(settings, node_runtime)

apt.packages(name="Install nginx (as shipped)", packages=["nginx"])
default = files.link(name="Disable the default site", path="/etc/nginx/sites-enabled/default", present=False)
site = files.put(name=f"Site: stock-{variant}.conf", src=str(SITES / f"stock-{variant}.conf"),
                 dest="/etc/nginx/sites-available/bench.conf", mode="644")
link = files.link(name="Enable the site", path="/etc/nginx/sites-enabled/bench.conf",
                  target="/etc/nginx/sites-available/bench.conf")
systemd.service(name="nginx is running", service="nginx", running=True, enabled=True)
systemd.service(name="Reload nginx", service="nginx", reloaded=True,
                _if=lambda: default.did_change() or site.did_change() or link.did_change())
