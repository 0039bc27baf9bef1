"""Idle capacity: many SSE streams that only get the app's heartbeat, held for minutes. Are the heartbeats on
time, and what does each stream cost nginx and the app in memory?

    .venv/bin/python -m bench.idle                # 50,000 streams, 2 min hold, 3 nginx configs; writes README
    .venv/bin/python -m bench.idle --quick        # 2,000 streams, 20 s, ssedeploy's defaults only;
                                                  #   docs/benchmarks/idle-quick.*
    .venv/bin/python -m bench.idle --streams 10000 --hold 30 --configs after   # idle-custom.*

Every process here and in the sandbox hosts has an open-files hard limit of 20,000 that root cannot raise, so:

- the app runs on several app hosts (inventory group `apps`, `app.bind` their sandbox address), each holding
  at most APP_HOST_STREAMS streams; nginx on as many proxies (group `proxies`) as ssedeploy's own sizing
  (ssedeploy.nginx.limits() with nginx.expected_streams 50,000, 2 connections per stream) says one proxy
  carries: the streams are split evenly over the proxies;
- the load client (bench/sse-load.js --heartbeat) runs as several processes of at most CLIENT_STREAMS streams
  each, on the proxies (Node copied there from an app host: proxies get no Node), to 127.0.0.1:80 from their
  own loopback source addresses (127.0.0.2, ...), with the proxy's net.ipv4.ip_local_port_range widened to
  PORT_RANGE for the run (the old value is read first and put back in a `finally`).

The app: examples/sse-app with INTERVAL_MS one hour (no event during the run) and app.heartbeat_seconds
HEARTBEAT_S (15 s, the default; --quick 5 s), so each stream gets `: ping` every HEARTBEAT_S s. A stream is on time if it answered 200, stayed
open through the hold and no gap between its heartbeats (from its first bytes to the hold's end) exceeded
HEARTBEAT_S + 1 s.

Memory per stream = (held - before) / streams: `before` after nginx and the app were restarted (fresh
processes) and nginx's workers each served a few requests (so pages every request touches once are in it);
`held` once every stream is open, in the second half of the hold. For nginx: all its processes (master and
workers) on every proxy, per stream through them; for the app: per app host, per the streams established to
it (`ss`). RSS = summed VmRSS; RssAnon = its anonymous part (heap: without the file pages of the binary and
libraries a worker maps in once); cgroup = memory.current (cgroup v2) or memory.usage_in_bytes (v1) of the
unit's cgroup where the sandbox host exposes one.

Configs (nginx.* settings, all else equal; one deploy each over the cluster, then fresh processes):
  before: nginx's own defaults (sse_proxy_buffer_size and request_pool_size left out);
  after:  ssedeploy's defaults (request_pool_size 1k, proxy_buffer_size 4k in the SSE locations);
  small:  ssedeploy's defaults + nginx.sse_proxy_buffer_size 2k (for apps whose stream headers are small).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import resource
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from bench import common
from ssedeploy import nginx
from ssedeploy.inventory import HTTPS_ENV
from ssedeploy.settings import parse

INSTANCE = "benchi"
CLIENT = Path(__file__).with_name("sse-load.js")
REMOTE_DIR = "/tmp/ssedeploy-idle"
NODE = f"{REMOTE_DIR}/bin/node"
HEARTBEAT_S = 15  # app.heartbeat_seconds: the default (full run); --quick: QUICK_HEARTBEAT_S (main() sets it)
QUICK_HEARTBEAT_S = 5
INTERVAL_MS = 3_600_000  # no event during the run: the heartbeat is all a stream gets
EXPECTED_STREAMS = 50_000  # nginx.expected_streams for every run (sizes the proxies' workers)
CLIENT_STREAMS = 12_500  # per load-client process (the 20,000 fd limit per process)
APP_HOST_STREAMS = 17_000  # per app host (its Node process: the same limit)
PORT_RANGE = "10000 65000"
RATE = 1250  # connects per second over all clients
FD_LIMIT = 20_000
CONFIGS = {
    "before": ("nginx defaults (before)", {"sse_proxy_buffer_size": None, "request_pool_size": None}),
    "after": ("ssedeploy defaults (after)", {}),
    "small": ("ssedeploy defaults + sse_proxy_buffer_size 2k", {"sse_proxy_buffer_size": "2k"}),
}
TARGET_ON_TIME = 99.9  # %
TARGET_NGINX_KIB = 8.0
# Processes of a unit, from its cgroup in the unified (v2) tree: nginx.service, the app's running instances.
UNIT_GLOBS = {"nginx": "system.slice/nginx.service", "app": "system.slice/system-sseapp.slice/sseapp@*.service"}
MEMORY = r"""
set -u
for d in /sys/fs/cgroup/unified/{glob} /sys/fs/cgroup/{glob}; do
  [ -f "$d/cgroup.procs" ] || continue
  rss=0; anon=0
  for p in $(cat "$d/cgroup.procs"); do
    set -- $(awk '/^VmRSS:/{{r=$2}} /^RssAnon:/{{a=$2}} END{{print r+0, a+0}}' /proc/$p/status 2>/dev/null || echo 0 0)
    rss=$((rss + $1)); anon=$((anon + $2))
  done
  cg=null
  rel=${{d#/sys/fs/cgroup/unified/}}; rel=${{rel#/sys/fs/cgroup/}}
  for f in /sys/fs/cgroup/unified/$rel/memory.current /sys/fs/cgroup/$rel/memory.current \
           /sys/fs/cgroup/memory/$rel/memory.usage_in_bytes; do
    [ -f "$f" ] && {{ cg=$(cat "$f"); break; }}
  done
  echo "$rss $anon $cg"
done
"""
ESTABLISHED = "ss -Htn state established '( sport = :{port} )' | wc -l"
WARM_UP = ("for i in $(seq {n}); do (exec 3<>/dev/tcp/127.0.0.1/80 && printf 'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n"
           "Connection: close\\r\\n\\r\\n' >&3 && cat <&3 >/dev/null) 2>/dev/null; done")
WAIT_APP = ("for i in $(seq 150); do (exec 3<>/dev/tcp/{bind}/{port} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 "
            "&& grep -q ' 200 ' <&3) 2>/dev/null && exit 0; sleep 0.1; done; echo 'no 200 from {port}' >&2; exit 1")


def parallel(fn, items: list) -> list:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def layout(streams: int) -> tuple[int, int]:
    """(proxies, app hosts) for `streams`: as many proxies as ssedeploy's sizing needs (this machine's CPUs and
    fd hard limit, as on its sandbox hosts), and app hosts of at most APP_HOST_STREAMS streams each. (1, 1): one
    host that is the whole site (nginx and the app on loopback), no cluster."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = FD_LIMIT if hard == resource.RLIM_INFINITY else hard
    carried = nginx.limits(parse({"nginx": {"expected_streams": EXPECTED_STREAMS}}), os.cpu_count() or 1, hard).streams
    return max(1, math.ceil(streams / carried)), max(1, math.ceil(streams / APP_HOST_STREAMS))


def inventory_text(proxies: int, nginx_settings: dict, single: bool = False) -> str:
    nginx_data = {"expected_streams": EXPECTED_STREAMS, **nginx_settings}
    app = {"heartbeat_seconds": HEARTBEAT_S, "env": {"INTERVAL_MS": str(INTERVAL_MS)}}
    if single:
        return (
            '"""bench/idle.py\'s host (written by it): the whole site."""\n'
            "from ssedeploy.inventory import sandbox_hosts\n\n"
            f"hosts = [(n, dict(d, nginx={nginx_data!r}, app={app!r})) for n, d in sandbox_hosts({INSTANCE!r}, https=False)]\n"
        )
    return (
        '"""bench/idle.py\'s cluster (written by it)."""\n'
        "from ssedeploy.inventory import sandbox_hosts\n\n"
        f"_hosts = sandbox_hosts({INSTANCE!r}, https=False)\n"
        f"_nginx = {nginx_data!r}\n"
        f"_app = {app!r}\n"
        f"proxies = [(n, dict(d, nginx=_nginx, app=_app)) for n, d in _hosts[:{proxies}]]\n"
        f"apps = [(n, dict(d, nginx=_nginx, app=dict(_app, bind=d['ssh_hostname']))) for n, d in _hosts[{proxies}:]]\n"
    )


def deploy(tmp: Path, proxies: int, config: str, single: bool = False) -> float:
    inventory = tmp / f"idle_{config}.py"
    inventory.write_text(inventory_text(proxies, CONFIGS[config][1], single))
    start = time.monotonic()
    common.run(common.BIN / "pyinfra", "-y", inventory, "deploy.py", timeout=900,
               env={"SSEDEPLOY_SANDBOX": INSTANCE, HTTPS_ENV: "0"})
    return time.monotonic() - start


def install_client(apps: list[dict], proxies: list[dict]) -> None:
    """Node (the app's own build, from an app host) and the load client on every proxy."""
    source = f"tar -C /srv/{parse({}).app.name}/current/.ssedeploy-node -cf - bin/node"
    if proxies == apps:  # one host: its app's Node, linked
        common.ssh(proxies[0], f"mkdir -p {REMOTE_DIR}/bin && ln -sf /srv/{parse({}).app.name}/current/.ssedeploy-node"
                               f"/bin/node {NODE}")
    for proxy in proxies:
        if proxies != apps:
            fetch = subprocess.Popen([*common.ssh_args(apps[0]), source], stdout=subprocess.PIPE)
            try:
                subprocess.run([*common.ssh_args(proxy), f"mkdir -p {REMOTE_DIR} && tar -C {REMOTE_DIR} -xf -"],
                               stdin=fetch.stdout, check=True, timeout=120)
            finally:
                fetch.stdout.close()
                fetch.wait(timeout=60)
        common.ssh(proxy, f"cat > {REMOTE_DIR}/sse-load.js && {NODE} --version", input=CLIENT.read_text())


def memory(host: dict, unit: str) -> dict:
    """{"rss": KiB, "anon": KiB, "cgroup": bytes or None} of a unit's processes on a host."""
    lines = [line.split() for line in common.ssh(host, f"bash -c {shlex.quote(MEMORY.format(glob=UNIT_GLOBS[unit]))}")
             .splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{host['name']}: no cgroup for {unit}")
    cgroups = [None if cg == "null" else int(cg) for _, _, cg in lines]
    return {"rss": sum(int(rss) for rss, _, _ in lines), "anon": sum(int(anon) for _, anon, _ in lines),
            "cgroup": None if None in cgroups else sum(cgroups)}


def restart(proxies: list[dict], apps: list[dict], settings) -> None:
    """Fresh nginx and app processes, every app answering, and each nginx worker past its first requests."""
    port = settings.app.instance_ports
    single = proxies == apps

    def app(host: dict) -> None:
        common.ssh(host, "for u in $(systemctl list-units 'sseapp@*.service' --state=running --plain --no-legend "
                         "| awk '{print $1}'); do sudo systemctl restart $u; done")
        live = common.ssh(host, "systemctl list-units 'sseapp@*.service' --state=running --plain --no-legend "
                                "| awk '{print $1}'").split()
        for unit in live:
            p = int(unit.split("@")[1].split(".")[0])
            wait = WAIT_APP.format(bind="127.0.0.1" if single else host["address"], port=p)
            common.ssh(host, f"bash -c {shlex.quote(wait)}", timeout=60)
        if not live:
            raise RuntimeError(f"{host['name']}: no running app instance (ports {port})")
    parallel(app, apps)
    parallel(lambda h: common.ssh(h, "sudo systemctl restart nginx"), proxies)
    parallel(lambda h: common.ssh(h, f"bash -c {shlex.quote(WARM_UP.format(n=64))}", timeout=120), proxies)
    time.sleep(2)


def app_streams(host: dict) -> int:
    ports = parse({}).app.instance_ports
    return sum(int(common.ssh(host, ESTABLISHED.format(port=p)).strip() or 0) for p in ports)


def measure(proxies: list[dict], apps: list[dict], streams: int, hold: int, config: str, settings) -> dict:
    """One config: fresh processes, memory before, the streams opened and held, memory while held."""
    t_restart = time.monotonic()
    restart(proxies, apps, settings)
    common.log(f"{config}: fresh nginx and app processes in {time.monotonic() - t_restart:.1f} s")
    before = {"nginx": parallel(lambda h: memory(h, "nginx"), proxies), "app": parallel(lambda h: memory(h, "app"), apps),
              "app_streams": parallel(app_streams, apps)}
    # Clients: streams split evenly over the proxies, at most CLIENT_STREAMS per process.
    per_proxy = [streams // len(proxies) + (i < streams % len(proxies)) for i in range(len(proxies))]
    jobs = []
    for proxy, n in zip(proxies, per_proxy):
        k = math.ceil(n / CLIENT_STREAMS)
        for j in range(k):
            count = n // k + (j < n % k)
            jobs.append((proxy, count, [f"127.0.0.{2 + 2 * j}", f"127.0.0.{3 + 2 * j}"]))
    ramp = max(count for _, count, _ in jobs) / (RATE / len(jobs))
    common.log(f"{config}: {streams:,} streams through {len(proxies)} prox{'y' if len(proxies) == 1 else 'ies'} "
               f"to {len(apps)} app host(s), {len(jobs)} client process(es), ramp {ramp:.0f} s + hold {hold} s")
    procs, results = [], []
    samples: list[dict] = []
    t0 = time.monotonic()
    try:
        for proxy, count, addresses in jobs:
            command = common.quoted(NODE, f"{REMOTE_DIR}/sse-load.js", "--url", "http://127.0.0.1:80/api/stream",
                                    "--streams", count, "--rate", round(RATE / len(jobs)), "--hold", hold,
                                    "--heartbeat", HEARTBEAT_S, "--connect-timeout", 20,
                                    "--local-address", ",".join(addresses))
            procs.append(subprocess.Popen([*common.ssh_args(proxy), command], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        # Memory while every stream is held: twice in the hold's second half (the later one is reported).
        for at in (ramp + hold * 0.5, ramp + hold * 0.8):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            sample = {"at_s": round(time.monotonic() - t0, 1),
                      "nginx": parallel(lambda h: memory(h, "nginx"), proxies),
                      "app": parallel(lambda h: memory(h, "app"), apps),
                      "app_streams": parallel(app_streams, apps),
                      "loadavg": os.getloadavg()[0]}
            samples.append(sample)
            common.log(f"  at {sample['at_s']} s: nginx RSS {sum(m['rss'] for m in sample['nginx']) / 1024:.0f} MiB, "
                       f"app streams {sample['app_streams']}, load {sample['loadavg']:.1f}")
        for proc in procs:
            out, err = proc.communicate(timeout=ramp + hold + 180)
            if proc.returncode != 0:
                raise RuntimeError(f"load client exited {proc.returncode}: {err[-2000:]}")
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    held = samples[-1]
    # Streams = connections established to the app now, less those before (the warm-up's idle keepalive ones).
    held["streams"] = [max(0, n - m) for n, m in zip(held["app_streams"], before["app_streams"])]
    return summarize(config, streams, hold, ramp, jobs, before, held, samples, results)


def summarize(config, streams, hold, ramp, jobs, before, held, samples, results) -> dict:
    on_time = sum(r["heartbeat"]["on_time"] for r in results)
    open_end = sum(r["open_at_end"] for r in results)
    errors: dict[str, int] = {}
    hist: dict[int, int] = {}
    for r in results:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
        for b, n in r["heartbeat"]["gap_hist_ms"].items():
            hist[int(b)] = hist.get(int(b), 0) + n
    gaps = [r["heartbeat"]["max_gap_ms"] for r in results]

    def per_stream(kind: str, key: str, count: int):
        pairs = list(zip(before[kind], held[kind]))
        if not count or any(a[key] is None or b[key] is None for a, b in pairs):
            return None
        scale = 1 if key != "cgroup" else 1 / 1024
        return sum((b[key] - a[key]) * scale for a, b in pairs) / count
    nginx_streams = sum(held["streams"])
    app_hosts = []
    for a, b, n in zip(before["app"], held["app"], held["streams"]):
        app_hosts.append({"streams": n, "rss_kib": (b["rss"] - a["rss"]) / n if n else None,
                          "anon_kib": (b["anon"] - a["anon"]) / n if n else None,
                          "cgroup_kib": (b["cgroup"] - a["cgroup"]) / 1024 / n if n and a["cgroup"] is not None
                          and b["cgroup"] is not None else None,
                          "rss_before_mib": a["rss"] / 1024, "rss_held_mib": b["rss"] / 1024})
    weighted = lambda key: (sum(h[key] * h["streams"] for h in app_hosts if h[key] is not None)
                            / max(1, sum(h["streams"] for h in app_hosts if h[key] is not None))
                            if any(h[key] is not None for h in app_hosts) else None)
    row = {
        "config": config, "label": CONFIGS[config][0], "settings": CONFIGS[config][1], "streams": streams,
        "hold_s": hold, "ramp_s": round(ramp, 1), "clients": len(jobs), "on_time": on_time,
        "on_time_pct": 100 * on_time / streams, "open_at_end": open_end, "errors": errors,
        "max_gap_s": None if any(g is None for g in gaps) else max(gaps) / 1000, "gap_hist_ms": hist,
        "pings": sum(r["heartbeat"]["pings"] for r in results),
        "nginx_streams": nginx_streams,
        "nginx_rss_kib": per_stream("nginx", "rss", nginx_streams),
        "nginx_anon_kib": per_stream("nginx", "anon", nginx_streams),
        "nginx_cgroup_kib": per_stream("nginx", "cgroup", nginx_streams),
        "nginx_rss_before_mib": sum(m["rss"] for m in before["nginx"]) / 1024,
        "nginx_rss_held_mib": sum(m["rss"] for m in held["nginx"]) / 1024,
        "app_rss_kib": weighted("rss_kib"), "app_anon_kib": weighted("anon_kib"),
        "app_cgroup_kib": weighted("cgroup_kib"), "app_hosts": app_hosts,
        "client_cpu_pct_hold": [r["client"].get("cpu_pct_hold") for r in results],
        "client_max_rss_mib": max(r["client"].get("max_rss_bytes", 0) for r in results) / 2**20,
        "samples": samples, "loadavg_max": max(s["loadavg"] for s in samples),
        "client_ramp_s": max(r["ramp_s"] for r in results),
    }
    common.log(f"  {config}: on time {on_time:,}/{streams:,} ({row['on_time_pct']:.3f} %), max gap "
               f"{row['max_gap_s']} s, errors {errors or 'none'}; nginx {common.fmt(row['nginx_rss_kib'], 1)} KiB/stream "
               f"RSS ({common.fmt(row['nginx_anon_kib'], 1)} anon), app {common.fmt(row['app_rss_kib'], 1)} KiB/stream")
    return row


def set_port_range(proxies: list[dict], value: str | None = None) -> list[str]:
    """The proxies' net.ipv4.ip_local_port_range before; set to `value` if given."""
    command = "cat /proc/sys/net/ipv4/ip_local_port_range"
    old = parallel(lambda h: " ".join(common.ssh(h, command).split()), proxies)
    if value:
        parallel(lambda h: common.ssh(h, f"sudo sysctl -q -w net.ipv4.ip_local_port_range={shlex.quote(value)}"),
                 proxies)
    return old


def kib(value) -> str:
    return common.fmt(value, 1) if value is not None else "not exposed"


def placement(shape: dict, clients: int) -> str:
    """Where nginx, the app and the load client ran."""
    plural = "es" if clients > 1 else ""
    client = (f"the load client (`bench/sse-load.js --heartbeat`) as {clients} process{plural} (<= {CLIENT_STREAMS:,} "
              f"streams each) on the {'host' if shape['single'] else 'proxies' if shape['proxies'] > 1 else 'proxy'}, "
              "to 127.0.0.1:80 from 127.0.0.2, 127.0.0.3, ...; net.ipv4.ip_local_port_range "
              f"{shape['port_range_old']} widened to {PORT_RANGE} for the run and "
              f"{'restored' if shape.get('port_range_restored') else '**not restored**'}")
    sizing = (f"`nginx.expected_streams` {EXPECTED_STREAMS:,}: {shape['workers']} workers x "
              f"{shape['worker_connections']:,} connections each")
    if shape["single"]:
        return f"One sandbox host, the whole site (nginx, {sizing}; the app on loopback); {client}."
    return (f"Cluster (open-files hard limit {FD_LIMIT:,} per process, root cannot raise it): {shape['proxies']} "
            f"prox{'y' if shape['proxies'] == 1 else 'ies'} (nginx, {sizing}; the streams split evenly over them) in "
            f"front of {shape['apps']} app hosts (`app.bind` their own address, least_conn); {client}.")


def report(rows: list[dict], facts: dict, shape: dict) -> tuple[str, dict]:
    header = ["nginx config", "streams", "on time", "on-time share", "max heartbeat gap s", "errors",
              "nginx KiB/stream RSS", "nginx KiB/stream RssAnon", "nginx KiB/stream cgroup", "app KiB/stream RSS",
              "app KiB/stream cgroup", "nginx RSS MiB before → held", "app RSS MiB per host before → held"]
    lines = []
    for r in rows:
        errors = ", ".join(f"{k}: {n:,}" for k, n in sorted(r["errors"].items())) or "none"
        apps = ", ".join(f"{h['rss_before_mib']:.0f} → {h['rss_held_mib']:.0f} ({h['streams']:,} streams)"
                         for h in r["app_hosts"])
        lines.append([r["label"], f"{r['streams']:,}", f"{r['on_time']:,}", f"{r['on_time_pct']:.3f} %",
                      common.fmt(r["max_gap_s"], 2), errors, kib(r["nginx_rss_kib"]), kib(r["nginx_anon_kib"]),
                      kib(r["nginx_cgroup_kib"]), kib(r["app_rss_kib"]), kib(r["app_cgroup_kib"]),
                      f"{r['nginx_rss_before_mib']:.0f} → {r['nginx_rss_held_mib']:.0f}", apps])
    targets = {}
    worst = min(rows, key=lambda r: r["on_time_pct"])
    targets[f">= {TARGET_ON_TIME} % of streams on time (every config)"] = (
        f"{common.verdict(worst['on_time_pct'] >= TARGET_ON_TIME)} (lowest {worst['on_time_pct']:.3f} %, "
        f"{worst['label']})")
    for r in rows:
        if r["config"] == "before" or r["nginx_rss_kib"] is None:
            continue
        targets[f"nginx <= {TARGET_NGINX_KIB:.0f} KiB per stream (RSS), {r['label']}"] = (
            f"{common.verdict(r['nginx_rss_kib'] <= TARGET_NGINX_KIB)} ({r['nginx_rss_kib']:.1f} KiB)")
    r0 = rows[0]
    cpu = [x for r in rows for x in r["client_cpu_pct_hold"] if x is not None]
    cg = ("memory.current of the units' cgroups is not exposed on these sandbox hosts (cgroup v1 memory "
          "controller only at the machine level, no memory controller in the unified tree), so those columns "
          "are empty" if all(r["nginx_cgroup_kib"] is None for r in rows)
          else "cgroup = memory.current (v2) or memory.usage_in_bytes (v1) of the unit's cgroup")
    markdown = "\n".join([
        common.table(header, lines), "",
        *[f"- target {name}: **{outcome}**" for name, outcome in targets.items()], "",
        f"{r0['streams']:,} streams, heartbeat only: the example app with `INTERVAL_MS` {INTERVAL_MS:,} (no event) "
        f"and `app.heartbeat_seconds` {HEARTBEAT_S} (`: ping` every {HEARTBEAT_S} s, nginx's proxy_read_timeout "
        f"{4 * HEARTBEAT_S} s), opened at {RATE:,}/s and held {r0['hold_s']} s after the ramp. On time = 200, open "
        f"through the hold and every gap between heartbeats (from the first bytes to the hold's end) <= "
        f"{HEARTBEAT_S + 1} s. {placement(shape, r0['clients'])}",
        "",
        "Memory per stream = (held - before) / streams: before = fresh nginx and app processes (restarted, each "
        "nginx worker past its first requests), held = every stream open, late in the hold. nginx: master and all "
        "workers of every proxy, per stream through them; app: per app host, per the streams established to it "
        "(`ss`), averaged. RSS = summed VmRSS; RssAnon = its anonymous part (heap: without the binary's and "
        f"libraries' file pages a worker maps in once). {cg}. The clients used "
        f"{min(cpu):.0f}-{max(cpu):.0f} % of one core each during the hold (up to "
        f"{max(r['client_max_rss_mib'] for r in rows):.0f} MiB RSS); 1-min load average up to "
        f"{max(r['loadavg_max'] for r in rows):.1f}. Configs: nginx defaults = `nginx.sse_proxy_buffer_size` and "
        "`nginx.request_pool_size` set to None (left out); ssedeploy defaults = `request_pool_size 1k` in the "
        "site, `proxy_buffer_size 4k` in the SSE locations; one deploy each, then fresh processes.",
        "",
        common.machine_line(facts),
    ])
    return markdown, {"machine": facts, "shape": shape, "targets": targets, "rows": rows}


def machine(proxy: dict, app: dict) -> dict:
    facts = common.machine()
    out = parallel(lambda job: common.ssh(job[0], job[1], check=False).strip(), [
        (proxy, "/usr/sbin/nginx -v 2>&1"), (app, f"/srv/{parse({}).app.name}/current/.ssedeploy-node/bin/node --version"),
        (app, ". /etc/os-release; echo $PRETTY_NAME")])
    facts["nginx"] = out[0].split("/", 1)[-1].strip() if "/" in out[0] else out[0] or "?"
    facts["node"] = out[1].lstrip("v") or "?"
    facts["sandbox host"] = out[2] or "?"
    return facts


def main() -> None:
    global HEARTBEAT_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 streams, 20 s, ssedeploy's defaults; no README")
    parser.add_argument("--streams", type=int, help="streams (not written to the README)")
    parser.add_argument("--hold", type=int, help="seconds to hold after the ramp (not written to the README)")
    parser.add_argument("--configs", help=f"comma-separated, of {', '.join(CONFIGS)} (not written to the README)")
    parser.add_argument("--heartbeat", type=int, help=f"app.heartbeat_seconds (default {HEARTBEAT_S}; --quick "
                                                      f"{QUICK_HEARTBEAT_S}; not written to the README)")
    args = parser.parse_args()
    HEARTBEAT_S = args.heartbeat or (QUICK_HEARTBEAT_S if args.quick else HEARTBEAT_S)
    streams = args.streams or (2000 if args.quick else 50_000)
    hold = args.hold or (20 if args.quick else 120)
    configs = args.configs.split(",") if args.configs else ["after"] if args.quick else list(CONFIGS)
    if not 1 <= streams <= 60_000 or not 5 <= hold <= 600 or set(configs) - set(CONFIGS):
        parser.error(f"streams 1..60000, hold 5..600 s, configs from {', '.join(CONFIGS)}")
    custom = bool(args.streams or args.hold or args.configs or args.heartbeat)
    stem = "idle-custom" if custom else "idle-quick" if args.quick else "idle"
    proxy_count, app_count = layout(streams)

    started = time.monotonic()
    rows, shape = [], {}
    hosts_needed = 1 if (proxy_count, app_count) == (1, 1) else proxy_count + app_count
    with common.instance(INSTANCE, hosts_needed), tempfile.TemporaryDirectory(prefix="ssedeploy-idle-") as tmp:
        tmp = Path(tmp)
        booted = time.monotonic()
        hosts = common.hosts(INSTANCE)
        single = (proxy_count, app_count) == (1, 1)
        proxies, apps = (hosts, hosts) if single else (hosts[:proxy_count], hosts[proxy_count:])
        first = deploy(tmp, proxy_count, configs[0], single)
        common.log(f"first deploy of {len(hosts)} hosts ({proxy_count} proxies, {app_count} app hosts): {first:.1f} s")
        install_client(apps, proxies)
        common.log(f"load client installed at {time.monotonic() - started:.0f} s")
        lim = nginx.limits(parse({"nginx": {"expected_streams": EXPECTED_STREAMS}}), os.cpu_count() or 1, FD_LIMIT)
        shape = {"proxies": proxy_count, "apps": app_count, "single": single, "workers": lim.workers,
                 "worker_connections": lim.worker_connections, "boot_s": round(booted - started, 1),
                 "first_deploy_s": round(first, 1)}
        olds = set_port_range(proxies)
        shape["port_range_old"] = " / ".join(sorted(set(olds)))
        try:
            set_port_range(proxies, PORT_RANGE)
            for i, config in enumerate(configs):
                if i:
                    seconds = deploy(tmp, proxy_count, config, single)
                    common.log(f"deploy of {config}: {seconds:.1f} s")
                settings = parse({"nginx": {"expected_streams": EXPECTED_STREAMS, **CONFIGS[config][1]}})
                rows.append(measure(proxies, apps, streams, hold, config, settings))
        finally:
            for proxy, value in zip(proxies, olds):
                common.ssh(proxy, f"sudo sysctl -q -w net.ipv4.ip_local_port_range={shlex.quote(value)}", check=False)
            shape["port_range_restored"] = set_port_range(proxies) == olds
            common.log(f"net.ipv4.ip_local_port_range restored to {shape['port_range_old']}: "
                       f"{shape['port_range_restored']}")
        facts = machine(proxies[0], apps[0])
        down_from = time.monotonic()
    shape["teardown_s"] = round(time.monotonic() - down_from, 1)
    common.log(f"teardown {shape['teardown_s']} s")
    markdown, data = report(rows, facts, shape)
    data["wall_s"] = round(time.monotonic() - started, 1)
    subtitle = f"{facts['nproc']} cores, nginx {facts.get('nginx')}, Node {facts.get('node')}, {facts['date']}"
    from bench import plots  # matplotlib (the bench extra) only here: the unit tests import this module without it
    common.publish(stem, "idle", markdown, data,
                   lambda png: plots.idle(rows, png, subtitle, TARGET_NGINX_KIB, HEARTBEAT_S + 1))


if __name__ == "__main__":
    main()
