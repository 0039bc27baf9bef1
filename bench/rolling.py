"""What a rolling release costs the streams of a cluster: a new build rolled over 3 app hosts, one at a time
(app.rolling_batch 1), behind 2 proxies, while EventSource-like clients stream through both proxies.

    .venv/bin/python -m bench.rolling              # 300 streams; writes README
    .venv/bin/python -m bench.rolling --quick      # 100 streams; docs/benchmarks/rolling-quick.*
    .venv/bin/python -m bench.rolling --clients 50 # docs/benchmarks/rolling-custom.*

Sandbox instance `benchc`, 5 hosts: hosts 1-2 in the inventory group `proxies` (nginx), hosts 3-5 in `apps`
(the app on its own sandbox address, app.bind), deployed by deploy.py over plain HTTP with shortened timeouts
(SETTINGS), from a temporary inventory module. Then a new build of examples/sse-app (one file added) is
deployed while half the clients (tests/e2e/eventsource.py: Last-Event-ID, reconnect after `retry:`) stream
through each proxy and a new stream opens every 0.5 s through each (the probes). The window runs from just
before that deploy until the roll has settled: every app host runs only its live instance (no drain pending)
and no old nginx worker is left on either proxy. Streams are counted on each app host (`ss`, established
connections to the app's instance ports) before the deploy and once every client has resumed after it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shlex
import tempfile
import time
from pathlib import Path

from bench import common
from ssedeploy import instances, run_results
from ssedeploy.inventory import HTTPS_ENV
from ssedeploy.paths import app_dir
from ssedeploy.settings import parse
from tests.e2e.eventsource import Fleet, cuts, report

INSTANCE = "benchc"
HOSTS = 5
PROXY_COUNT = 2  # hosts 1-2 run nginx; hosts 3-5 run the app
SETTINGS = {"nginx": {"worker_shutdown_timeout": 20}, "app": {"drain_seconds": 5, "stop_timeout": 10}}
DEFAULTS = parse(SETTINGS)
APP = DEFAULTS.app.name
PORTS = DEFAULTS.app.instance_ports
APP_RETRY_S = 5.0  # the example app's `retry:` at a stream's start; its shutdown sends 0.5-1.5 s
STAGGER_S = 0.005
PROBE_EVERY_S = 0.5
# From the deploy's end: the last batch's drain (5 s) and stop (up to 10 s), and nginx's old workers of the
# last switch (up to worker_shutdown_timeout, 20 s), with room for a loaded machine.
SETTLE_S = 90
RESUME_S = 30  # for every client's first event after the window
OLD_WORKERS = "pgrep -c -f '^nginx: worker process is shutting down' || true"
# Established connections to the app's instance ports on an app host: "LOCAL PEER" per line.
SPREAD = ("ss -Htn state established '( " + " or ".join(f"sport = :{p}" for p in PORTS) + " )' "
          "| awk '{print $(NF-1), $NF}'")
COLUMNS = ["event", *common.STREAM_COLUMNS, "streams per app host before", "streams per app host after"]


def inventory_text(source: str | None) -> str:
    """The cluster's inventory module: every host with SETTINGS (and app.source), app hosts bound to their
    own sandbox address."""
    app = {**SETTINGS["app"], **({"source": source} if source else {})}
    return (
        '"""bench/rolling.py\'s cluster (written by it): 2 proxies, 3 app hosts."""\n'
        "from ssedeploy.inventory import sandbox_hosts\n\n"
        f"_hosts = sandbox_hosts({INSTANCE!r}, https=False)\n"
        f"if len(_hosts) != {HOSTS}:\n"
        f"    raise SystemExit(f'sandbox {INSTANCE} needs {HOSTS} running hosts, found {{len(_hosts)}}')\n"
        f"_nginx = {SETTINGS['nginx']!r}\n"
        f"_app = {app!r}\n"
        f"proxies = [(n, dict(d, nginx=_nginx, app=_app)) for n, d in _hosts[:{PROXY_COUNT}]]\n"
        f"apps = [(n, dict(d, nginx=_nginx, app=dict(_app, bind=d['ssh_hostname']))) for n, d in _hosts[{PROXY_COUNT}:]]\n"
    )


class Deployer:
    """`pyinfra -y INVENTORY deploy.py` over the cluster; what it did read from its run results."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.runs = tmp, 0

    def __call__(self, source: str | None = None, check: bool = True) -> dict:
        self.runs += 1
        inventory = self.tmp / f"cluster_{self.runs}.py"
        inventory.write_text(inventory_text(source))
        path = self.tmp / f"results_{self.runs}.json"
        env = {"SSEDEPLOY_SANDBOX": INSTANCE, "SSEDEPLOY_RESULTS": str(path), HTTPS_ENV: "0"}
        start = time.monotonic()
        done = common.run(common.BIN / "pyinfra", "-y", inventory, "deploy.py", env=env, timeout=900, check=check)
        seconds = time.monotonic() - start
        try:
            results = run_results.load(path)
        except run_results.ResultsError as e:
            if check:
                raise
            results = {"hosts": {}, "failed_hosts": {"?": str(e)}}
        if check and results["failed_hosts"]:
            raise RuntimeError(f"the deploy failed on {results['failed_hosts']}\n{done.stderr[-3000:]}")
        return {"seconds": seconds, "returncode": done.returncode, "results": results,
                "tail": (done.stdout[-2000:] + done.stderr[-2000:]) if done.returncode else ""}


def parallel(fn, items: list) -> list:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(fn, items))


def app_state(host: dict) -> instances.HostInstances:
    return common.app_instances(host, DEFAULTS, cluster=True)


def live(host: dict) -> int | None:
    return instances.live_port(app_state(host), PORTS)


def app_settled(host: dict) -> bool:
    found = app_state(host)
    port = instances.live_port(found, PORTS)
    serving = found.instances.get(port) if port is not None else None
    others = [p for p, i in found.instances.items() if p != port and (i.running or i.draining)]
    legacy = found.legacy is not None and found.legacy.running
    return serving is not None and serving.running and not others and not legacy


def proxy_settled(host: dict) -> bool:
    return common.ssh(host, OLD_WORKERS).strip() in ("", "0")


def settled(proxies: list[dict], apps: list[dict]) -> bool:
    """Every app host runs only its live instance, with no drain pending; no old nginx worker on a proxy."""
    return all(parallel(lambda h: app_settled(h) if h in apps else proxy_settled(h), [*apps, *proxies]))


def spread(apps: list[dict], proxies: list[dict]) -> dict:
    """{app host: {"ports": {port: streams}, "from": {proxy: streams}}}: established connections to the
    app's instance ports (nginx's idle upstream keepalive connections included, if any)."""
    by_address = {p["address"]: p["name"] for p in proxies}

    def one(host: dict) -> dict:
        ports, peers = {str(p): 0 for p in PORTS}, {}
        for line in common.ssh(host, SPREAD).splitlines():
            local, peer = line.split()
            port, source = local.rsplit(":", 1)[1], peer.rsplit(":", 1)[0]
            ports[port] = ports.get(port, 0) + 1
            name = by_address.get(source, source)
            peers[name] = peers.get(name, 0) + 1
        return {"ports": ports, "from": peers}
    return dict(zip((h["name"] for h in apps), parallel(one, apps)))


def journal(host: dict, unit: str, since: float) -> list[tuple[float, str]]:
    """(CLOCK_MONOTONIC seconds, message) of `unit`'s journal entries at or after `since` (the hosts share this
    machine's monotonic clock: systemd-nspawn gives them no time namespace)."""
    out = common.ssh(host, f"sudo journalctl -u {shlex.quote(unit)} -o json --output-fields=MESSAGE -n 500",
                     check=False)
    found = []
    for line in out.splitlines():
        try:
            entry = json.loads(line)
            at = int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6
        except (ValueError, KeyError, TypeError):
            continue
        if at >= since and isinstance(entry.get("MESSAGE"), str):
            found.append((at, entry["MESSAGE"]))
    return found


def timeline(proxies: list[dict], apps: list[dict], before: dict, after: dict, t0: float) -> dict:
    """Seconds from the deploy's start: on each app host, its new instance started, its old one told to stop
    (SIGTERM: the drain's end) and stopped; on each proxy, nginx reloaded."""
    def first(entries, prefix: str) -> float | None:
        return next((round(at - t0, 1) for at, message in entries if message.startswith(prefix)), None)

    def app(host: dict) -> dict:
        old, new = f"{APP}@{before[host['name']]}.service", f"{APP}@{after[host['name']]}.service"
        started = journal(host, new, t0) if new != old else []
        stopped = journal(host, old, t0)
        return {"new_started_s": first(started, f"Started {new}"), "old_sigterm_s": first(stopped, f"Stopping {old}"),
                "old_stopped_s": first(stopped, f"Stopped {old}")}

    def proxy(host: dict) -> dict:
        return {"reloads_s": [round(at - t0, 1) for at, message in journal(host, "nginx.service", t0)
                              if message.startswith("Reloaded nginx.service")]}
    hosts = [*apps, *proxies]
    return dict(zip((h["name"] for h in hosts),
                    parallel(lambda h: app(h) if h in apps else proxy(h), hosts)))


def clock_shared(host: dict) -> bool:
    """The hosts' CLOCK_MONOTONIC is this machine's (their uptime is the machine's): timeline() may subtract."""
    here = time.monotonic()
    there = float(common.ssh(host, "cat /proc/uptime").split()[0])
    return abs(there - here) < 5


def batches_of(results: dict) -> list[str]:
    """The rolling release's batches, as its operations name them ("batch 1/3: benchc-3")."""
    found = []
    for host in results["hosts"].values():
        for op in host["operations"]:
            match = re.search(r"\((batch \d+/\d+: [^)]*)\)", op["name"])
            if match and match.group(1) not in found:
                found.append(match.group(1))
    return found


CODE_PATHS = ["deploy.py", "roles", "ssedeploy", "templates", "examples/sse-app"]


def code_state() -> dict:
    """The commit the deploy code is at, and what differs from it in the working tree (read-only git)."""
    def git(*args: str) -> str:
        done = common.run("git", "--no-optional-locks", *args, check=False, env={"GIT_OPTIONAL_LOCKS": "0"})
        return done.stdout if done.returncode == 0 else ""
    dirty = [line[3:] for line in git("status", "--porcelain", "--", *CODE_PATHS).splitlines() if line[3:]]
    diff = git("diff", "HEAD", "--", *CODE_PATHS)
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "?", "modified": dirty,
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None}


def cut_causes(clients, since: float, until: float) -> dict:
    """The window's cuts by who ended the stream: the app's drain (its shutdown `retry:` of 0.5-1.5 s was in
    force) or something else with the stream's first `retry:` (5 s) in force: an old nginx worker's
    worker_shutdown_timeout, a reset. Seconds from the window's start of the first and last of each."""
    drain, other, per_client = [], [], {}
    for c in clients:
        found = cuts(c, since, until)
        per_client[len(found)] = per_client.get(len(found), 0) + 1
        for cut in found:
            (drain if cut.retry_s < APP_RETRY_S else other).append(cut.at - since)
    span = (lambda xs: [round(min(xs), 1), round(max(xs), 1)] if xs else None)
    return {"by_drain": len(drain), "other": len(other), "drain_span_s": span(drain), "other_span_s": span(other),
            "clients_by_cuts": {str(k): v for k, v in sorted(per_client.items())}}


def event(proxies: list[dict], apps: list[dict], clients: int, deploy) -> dict:
    """`deploy()` (the new build's pyinfra run) while `clients` streams run, half through each proxy."""
    before = dict(zip((h["name"] for h in apps), parallel(live, apps)))
    common.log(f"new build: {clients:,} streams through {', '.join(p['address'] for p in proxies)}; "
               f"app hosts live at {before}")
    half = clients // 2
    fleets = [Fleet(p["address"], 80, "/api/stream", n, stagger_s=STAGGER_S)
              for p, n in zip(proxies, (clients - half, half))]
    probers, records, probes = [], [], []
    try:
        for fleet in fleets:
            fleet.start()
        for fleet in fleets:
            fleet.wait_streaming(30 + clients * STAGGER_S)
        probers = [fleet.prober(every_s=PROBE_EVERY_S, timeout_s=10).start() for fleet in fleets]
        spread_before = spread(apps, proxies)
        code = code_state()
        cpu0, since, t0 = common.cpu_s(), Fleet.mark(), time.monotonic()
        ran = deploy()
        wall = time.monotonic() - t0
        done = common.poll(lambda: settled(proxies, apps), SETTLE_S, every=0.5)
        settle_s = time.monotonic() - t0
        until = Fleet.mark()
        everyone = [c for fleet in fleets for c in fleet.clients]
        resumed = common.poll(lambda: all(c.gave_up or (c.events and c.events[-1][1] > until)
                                          for c in everyone), RESUME_S)
        probes = [p for prober in probers for p in prober.stop()]  # no probe stream left open for the count
        spread_after = spread(apps, proxies)
        cpu = common.cpu_s() - cpu0
        load = os.getloadavg()
        elapsed = Fleet.mark() - since
    finally:  # the streams end also when the deploy failed
        for fleet in fleets:
            records += fleet.stop()
    r = report(records, probes, since, until)
    after = dict(zip((h["name"] for h in apps), parallel(live, apps)))
    results = ran["results"]
    row = {
        "event": "new build", "code": code, "live_before": before, "live_after": after, "settled": done, "resumed": resumed,
        "deploy_wall_s": round(wall, 1), "settled_after_s": round(settle_s, 1), "window_s": round(until - since, 1),
        "deploy_exit": ran["returncode"], "failed_hosts": results["failed_hosts"], "batches": batches_of(results),
        "deploy_tail": ran["tail"],
        "spread_before": spread_before, "spread_after": spread_after,
        "timeline_s": timeline(proxies, apps, before, after, t0) if clock_shared(apps[0]) else None,
        "cuts": cut_causes(records, since, until),
        "client_cpu_pct": round(100 * cpu / max(elapsed, 0.001)), "loadavg": [round(x, 2) for x in load],
        **r.as_dict(),
    }
    common.log(f"  {before} -> {after}, deploy {wall:.1f} s (exit {ran['returncode']}), settled: {done} "
               f"after {settle_s:.1f} s; cut {r.clients_cut}/{r.clients} (max {r.max_cuts_per_client}), "
               f"worst gap {r.worst_gap_s} s, non-200 {r.non_200}, fallback {r.fallback_answers}, "
               f"lost ids {r.lost_ids}; cuts {row['cuts']}")
    return row


def short(name: str) -> str:
    return name.removeprefix(f"{INSTANCE}-")


def streams(per_host: dict) -> str:
    """"3: 50 / 4: 50 / 5: 50" (port: count where more than one port has streams)."""
    cells = []
    for name, found in per_host.items():
        total = sum(found["ports"].values())
        used = {p: n for p, n in found["ports"].items() if n}
        detail = f" ({', '.join(f'{n} on {p}' for p, n in used.items())})" if len(used) > 1 else ""
        cells.append(f"{short(name)}: {total}{detail}")
    return " / ".join(cells)


def label(row: dict) -> str:
    moves = ", ".join(f"{short(n)}: {row['live_before'][n]} → {row['live_after'][n]}" for n in row["live_before"])
    text = f"{row['event']} ({moves})"
    if row["deploy_exit"]:
        text += f", **deploy failed: {row['failed_hosts'] or 'exit ' + str(row['deploy_exit'])}**"
    if not row["settled"]:
        text += f", **not settled within {SETTLE_S} s**"
    if not row["resumed"]:
        text += f", **not every stream resumed within {RESUME_S} s**"
    return text


def summary(rows: list[dict], facts: dict) -> tuple[str, dict]:
    lines = [[label(r), *common.stream_cells(r), streams(r["spread_before"]), streams(r["spread_after"])] for r in rows]
    unmoved = [short(n) for r in rows for n in r["live_before"] if r["live_before"][n] == r["live_after"][n]]
    failed = [r for r in rows if r["deploy_exit"] or not r["settled"]]
    targets = {
        **common.stream_targets(rows),
        "every app host moved to its other instance, the deploy succeeded and the roll settled":
            common.verdict(not unmoved and not failed)
            + (f" (not moved: {', '.join(unmoved)})" if unmoved else "")
            + (" (deploy failed or did not settle)" if failed else ""),
    }
    r = rows[0]
    c = r["cuts"]
    per_client = ", ".join(f"{v:,} cut {k}×" for k, v in c["clients_by_cuts"].items())
    span = (lambda s: f"{s[0]}-{s[1]} s" if s else "none")
    when, after_reload = "", ""
    if r["timeline_s"]:
        t = r["timeline_s"]
        apps = [n for n in t if "new_started_s" in t[n]]
        proxies = [n for n in t if "reloads_s" in t[n]]
        when = ("Timeline, seconds from the deploy's start: " + "; ".join(
            f"app host {short(n)} new instance started {common.fmt(t[n]['new_started_s'], 1)}, old one SIGTERMed "
            f"{common.fmt(t[n]['old_sigterm_s'], 1)}, stopped {common.fmt(t[n]['old_stopped_s'], 1)}" for n in apps)
            + "; " + "; ".join(f"proxy {short(n)} reloaded nginx at "
                               f"{', '.join(common.fmt(x, 1) for x in t[n]['reloads_s']) or 'never'}" for n in proxies)
            + ". ")
        reloads = sorted(x for n in proxies for x in t[n]["reloads_s"])
        sigterms = [t[n]["old_sigterm_s"] for n in apps if t[n]["old_sigterm_s"] is not None]
        if reloads and sigterms:
            when += (f"From the first proxy reload to the last old instance's SIGTERM: {max(sigterms) - reloads[0]:.1f} s "
                     "(streams still on a reload's old workers are cut by nginx "
                     f"{SETTINGS['nginx']['worker_shutdown_timeout']} s after it). ")
        prior = [x for x in reloads if c["other_span_s"] and x <= c["other_span_s"][0]]
        if prior:
            after_reload = (f", {c['other_span_s'][0] - prior[-1]:.1f} s after the last proxy reload before them "
                            f"at {prior[-1]} s; nginx.worker_shutdown_timeout is {SETTINGS['nginx']['worker_shutdown_timeout']} s")
    load = max(x["loadavg"][0] for x in rows)
    client_cpu = max(x["client_cpu_pct"] for x in rows)
    markdown = "\n".join([
        common.table(COLUMNS, lines), "",
        *[f"- target {name}: **{outcome}**" for name, outcome in targets.items()], "",
        f"{r['clients']:,} EventSource-like clients (`tests/e2e/eventsource.py`: Last-Event-ID, reconnect after "
        f"`retry:`) on this machine stream through the 2 proxies (sandbox hosts 1-2, half through each, one event "
        f"per second each) from 3 app hosts (hosts 3-5, `app.bind` their own address; the proxies' upstream "
        f"lists all three, least_conn); a new stream opens every {PROBE_EVERY_S} s through each proxy during "
        "the window (probes: time to their first event). Event: a new build of `examples/sse-app` (one file "
        f"added) deployed with `pyinfra -y` over the cluster, rolled one app host at a time "
        f"({'; '.join(r['batches']) or 'no batch in the results'}); (A → B) = the port each app host's proxies "
        "sent to before and after (app host: port). Window: from just before the deploy until every app host runs only its live "
        "instance and no old nginx worker is left on either proxy "
        f"({r['settled_after_s']} s after the deploy started). Gap: from a cut stream's last event to its next "
        "one; minus retry: beyond the `retry:` the client had to wait anyway. Streams per app host: established "
        "connections to the app's ports (`ss` on the host) once every client streams, before the deploy, and "
        "once every client had an event after the window.",
        "",
        f"Cuts: {c['by_drain']:,} by an old app instance's drain (its shutdown `retry:` 0.5-1.5 s, "
        f"{span(c['drain_span_s'])} into the deploy), {c['other']:,} with the stream's first `retry:` "
        f"(5 s) still in force, so not by the app ({span(c['other_span_s'])}{after_reload}); "
        f"per client: {per_client}. "
        f"{when}"
        f"Code: commit {r['code']['commit']}"
        + (f" with uncommitted changes to {', '.join(r['code']['modified'])}" if r["code"]["modified"] else "")
        + ". "
        f"Before the window: sandbox up {r['boot_s']} s, first (cold) deploy of the 5 hosts {r['first_deploy_s']} s. "
        "**Shortened timeouts** to keep a run short: nginx.worker_shutdown_timeout 20 s, app.drain_seconds 5 s, "
        "app.stop_timeout 10 s (defaults 60, 30, 15 s). "
        f"The clients used up to {client_cpu} % of one core; 1-min load average up to {load:.1f}.",
        "",
        common.machine_line(facts),
    ])
    return markdown, {"machine": facts, "settings": SETTINGS, "targets": targets, "rows": rows}


def machine(proxy: dict, app: dict) -> dict:
    """common.machine()'s facts, nginx read on a proxy and Node on an app host (each runs only its own)."""
    facts = common.machine()
    nginx, node, distro = parallel(lambda job: common.ssh(job[0], job[1], check=False).strip(), [
        (proxy, "/usr/sbin/nginx -v 2>&1"), (app, f"{app_dir(DEFAULTS)}/current/.ssedeploy-node/bin/node --version"),
        (app, ". /etc/os-release; echo $PRETTY_NAME")])
    facts["nginx"] = nginx.split("/", 1)[-1].strip() if "/" in nginx else nginx or "?"
    facts["node"] = node.lstrip("v") or "?"
    facts["sandbox host"] = distro or "?"
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 streams; no README")
    parser.add_argument("--clients", type=int, help="streams (not written to the README)")
    args = parser.parse_args()
    clients = args.clients or (100 if args.quick else 300)
    if not 2 <= clients <= 5000:
        parser.error("clients 2..5000")
    stem = "rolling-custom" if args.clients else "rolling-quick" if args.quick else "rolling"

    started = time.monotonic()
    with common.instance(INSTANCE, HOSTS), tempfile.TemporaryDirectory(prefix="ssedeploy-benchc-") as tmp:
        booted = time.monotonic()
        tmp = Path(tmp)
        hosts = common.hosts(INSTANCE)
        if len(hosts) != HOSTS:
            raise RuntimeError(f"sandbox {INSTANCE}: {len(hosts)} hosts, not {HOSTS}")
        proxies, apps = hosts[:PROXY_COUNT], hosts[PROXY_COUNT:]
        deploy = Deployer(tmp)
        first = deploy()  # the first build, cold
        common.log(f"first deploy of the cluster: {first['seconds']:.1f} s")
        if not common.poll(lambda: settled(proxies, apps), SETTLE_S, every=0.5):
            raise RuntimeError(f"the first deploy did not settle within {SETTLE_S} s")
        build2 = common.build(tmp, "build-2")
        row = event(proxies, apps, clients, lambda: deploy(source=build2, check=False))
        row["boot_s"], row["first_deploy_s"] = round(booted - started, 1), round(first["seconds"], 1)
        facts = machine(proxies[0], apps[0])
        down_from = time.monotonic()
    row["teardown_s"] = round(time.monotonic() - down_from, 1)
    common.log(f"sandbox up {row['boot_s']} s, first deploy {row['first_deploy_s']} s, window {row['window_s']} s, "
               f"teardown {row['teardown_s']} s")
    markdown, data = summary([row], facts)
    data["wall_s"] = round(time.monotonic() - started, 1)
    common.publish(stem, "rolling", markdown, data)


if __name__ == "__main__":
    main()
