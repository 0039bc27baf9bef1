"""What a release costs the streams (issue 12): a new build, an env change and a rollback, each while
EventSource-like clients stream through nginx.

    .venv/bin/python -m bench.release_cost              # 1,000 streams; writes README
    .venv/bin/python -m bench.release_cost --quick      # 200 streams; docs/benchmarks/release-quick.*
    .venv/bin/python -m bench.release_cost --clients 500  # docs/benchmarks/release-custom.*

Sandbox instance `benchr`, one host deployed by deploy.py with shortened timeouts (SETTINGS). For each event a
fresh fleet of clients (tests/e2e/eventsource.py: Last-Event-ID, reconnect after `retry:`) runs on this machine
and streams from the host through nginx, a new stream opens every 0.5 s (the probes), and the app's RSS is
sampled on the host every 0.2 s. The window runs from just before the change until the release has settled:
only the live instance runs and no old nginx worker is left.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench import common
from ssedeploy.settings import parse
from tests.e2e.eventsource import Fleet, report

INSTANCE = "benchr"
SETTINGS = {"nginx": {"worker_shutdown_timeout": 20}, "app": {"drain_seconds": 5, "stop_timeout": 10}}
DEFAULTS = parse(SETTINGS)
APP = DEFAULTS.app.name
STAGGER_S = 0.005  # between the clients' first connects: 1,000 streams open over 5 s
PROBE_EVERY_S = 0.5
SAMPLE_S = 0.2
STEADY_SAMPLES = 10  # RSS samples before the change (about 2 s)
SETTLE_S = 60  # drain 5 + stop up to 10 + nginx's old workers up to 20, with room
RESUME_S = 30  # for every client's first event after the window
OLD_WORKERS = "pgrep -c -f '^nginx: worker process is shutting down' || true"
# Summed VmRSS (kB) of every process of the app's instances (APP@*.service, in their template's slice), one
# line "EPOCH KB" every SAMPLE_S until stdin closes (or 3,000 samples).
RSS_LOOP = r"""
n=0
while [ $n -lt 3000 ]; do
  kb=0
  for p in $(cat /sys/fs/cgroup/system.slice/system-*.slice/APP@*.service/cgroup.procs \
                 /sys/fs/cgroup/unified/system.slice/system-*.slice/APP@*.service/cgroup.procs 2>/dev/null); do
    r=$(awk '/^VmRSS:/ {print $2}' /proc/$p/status 2>/dev/null); kb=$((kb + ${r:-0}))
  done
  echo "$(date +%s.%N) $kb"
  n=$((n + 1))
  read -r -t SAMPLE _; [ $? -gt 128 ] || break
done
""".replace("APP", APP).replace("SAMPLE", str(SAMPLE_S))
COLUMNS = ["event", *common.STREAM_COLUMNS, "app RSS before MiB", "app RSS peak MiB"]


def settings(**app) -> dict:
    return {**SETTINGS, "app": {**SETTINGS["app"], **app}}


class RssSampler:
    """RSS_LOOP on the host over one SSH session, read in a thread; stop() closes its stdin."""

    def __init__(self, host: dict) -> None:
        self.samples: list[tuple[float, int]] = []  # (epoch, kB)
        self.proc = subprocess.Popen([*common.ssh_args(host), f"sudo bash -c {common.quoted(RSS_LOOP)}"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) == 2:
                self.samples.append((float(parts[0]), int(parts[1])))

    def stop(self) -> list[tuple[float, int]]:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(5)
        return self.samples


def settled(host: dict) -> bool:
    """Only the live instance runs (no drain pending), and no old nginx worker holds a stream."""
    found = common.app_instances(host, DEFAULTS)
    others = [p for p, i in found.instances.items() if p != found.served_port and (i.running or i.draining)]
    legacy = found.legacy is not None and found.legacy.running
    return not others and not legacy and common.ssh(host, OLD_WORKERS).strip() in ("", "0")


def mib(kb: float | None) -> float | None:
    return None if not kb else round(kb / 1024, 1)


def event(host: dict, name: str, clients: int, change) -> dict:
    """`change()` (a pyinfra run or a rollback) while `clients` streams run: the figures of its window."""
    before = common.live_port(host, DEFAULTS)
    common.log(f"{name}: {clients:,} streams from this machine to {host['address']}, live instance {before}")
    fleet, prober, sampler = Fleet(host["address"], 80, "/api/stream", clients, stagger_s=STAGGER_S), None, None
    try:
        fleet.start()
        fleet.wait_streaming(30 + clients * STAGGER_S)
        prober = fleet.prober(every_s=PROBE_EVERY_S, timeout_s=10).start()
        sampler = RssSampler(host)
        if not common.poll(lambda: len(sampler.samples) >= STEADY_SAMPLES, 30):
            raise RuntimeError(f"no RSS samples from {host['name']}")
        cpu0, since = common.cpu_s(), fleet.mark()
        start = time.monotonic()
        change()
        wall = time.monotonic() - start
        done = common.poll(lambda: settled(host), SETTLE_S, every=0.5)
        until = fleet.mark()
        resumed = common.poll(lambda: all(c.gave_up or (c.events and c.events[-1][1] > until)
                                          for c in fleet.clients), RESUME_S)
        cpu = common.cpu_s() - cpu0
        load = os.getloadavg()
        elapsed = fleet.mark() - since
    finally:  # the streams and the sampler end also when the change failed
        try:
            records = fleet.stop()
        finally:
            samples = sampler.stop() if sampler else []
    r = report(records, prober.stop(), since, until)
    after = common.live_port(host, DEFAULTS)
    steady = [kb for t, kb in samples if t < since][-STEADY_SAMPLES:]
    window = [kb for t, kb in samples if t >= since]
    row = {
        "event": name, "live_before": before, "live_after": after, "settled": done, "resumed": resumed,
        "deploy_wall_s": round(wall, 1), "window_s": round(until - since, 1),
        "rss_before_mib": mib(statistics.median(steady) if steady else None),
        "rss_peak_mib": mib(max(window, default=None)), "rss_samples": len(samples),
        "client_cpu_pct": round(100 * cpu / max(elapsed, 0.001)), "loadavg": [round(x, 2) for x in load],
        **r.as_dict(),
    }
    common.log(f"  {before} -> {after} in {wall:.1f} s (settled: {done}), cut {r.clients_cut}/{r.clients}, "
               f"worst gap {r.worst_gap_s} s, non-200 {r.non_200}, fallback {r.fallback_answers}, "
               f"lost ids {r.lost_ids}, RSS {row['rss_before_mib']} -> {row['rss_peak_mib']} MiB")
    return row


def label(row: dict) -> str:
    text = f"{row['event']} ({row['live_before']} → {row['live_after']})"
    if not row["settled"]:
        text += f", **not settled within {SETTLE_S} s**"
    if not row["resumed"]:
        text += f", **not every stream resumed within {RESUME_S} s**"
    return text


def summary(rows: list[dict], facts: dict) -> tuple[str, dict]:
    lines = [[label(r), *common.stream_cells(r), common.fmt(r["rss_before_mib"], 0), common.fmt(r["rss_peak_mib"], 0)] for r in rows]
    switched = [r["event"] for r in rows if r["live_before"] == r["live_after"]]
    targets = {
        **common.stream_targets(rows),
        "every event moved the app to the other instance":
            common.verdict(not switched) + (f" (not: {', '.join(switched)})" if switched else ""),
    }
    load = max(r["loadavg"][0] for r in rows)
    client_cpu = max(r["client_cpu_pct"] for r in rows)
    markdown = "\n".join([
        common.table(COLUMNS, lines), "",
        *[f"- target {name}: **{outcome}**" for name, outcome in targets.items()], "",
        f"{rows[0]['clients']:,} EventSource-like clients (`tests/e2e/eventsource.py`: Last-Event-ID, reconnect "
        f"after `retry:`) on this machine stream through nginx from one sandbox host, one event per second each; "
        f"a new stream opens every {PROBE_EVERY_S} s during the window (probes: time to their first event). "
        "Events, in order: a new build of `examples/sse-app` (one file added), an `app.env` change, "
        "`ssedeploy rollback` to the first build; (A → B) = the app instance nginx sent to before and after. "
        "Window: from just before the change until only the live instance runs and no old nginx worker is left. "
        "Gap: from a cut stream's last event to its next one; minus retry: beyond the `retry:` the client had to "
        "wait anyway. "
        "Deploy wall time: the `pyinfra` run (or `ssedeploy rollback`). App RSS: both instances' processes "
        f"summed (VmRSS), sampled every {SAMPLE_S} s on the host: median of the last ~2 s before the change, "
        "peak over the window. **Shortened timeouts** to keep a run short: nginx.worker_shutdown_timeout 20 s, "
        "app.drain_seconds 5 s, app.stop_timeout 10 s (defaults 60, 30, 15 s). "
        f"The client used up to {client_cpu} % of one core; 1-min load average up to {load:.1f}.",
        "",
        common.machine_line(facts),
    ])
    return markdown, {"machine": facts, "settings": SETTINGS, "targets": targets, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 streams; no README")
    parser.add_argument("--clients", type=int, help="streams (not written to the README)")
    args = parser.parse_args()
    clients = args.clients or (200 if args.quick else 1000)
    if not 1 <= clients <= 5000:
        parser.error("clients 1..5000")
    stem = "release-custom" if args.clients else "release-quick" if args.quick else "release"

    started = time.monotonic()
    rows = []
    with common.instance(INSTANCE, 1), tempfile.TemporaryDirectory(prefix="ssedeploy-benchr-") as tmp:
        tmp = Path(tmp)
        host = common.hosts(INSTANCE)[0]
        env = {"SSEDEPLOY_SANDBOX": INSTANCE}
        runs = itertools.count()

        def deploy(data: dict) -> None:
            inventory = common.write_inventory(INSTANCE, tmp / f"inventory_{next(runs)}.py", data=data)
            common.run(common.BIN / "pyinfra", "-y", inventory, "deploy.py", env=env, timeout=900)

        deploy(settings())  # the first build, cold
        if not common.poll(lambda: settled(host), SETTLE_S, every=0.5):
            raise RuntimeError(f"{host['name']}: the first deploy did not settle within {SETTLE_S} s")
        build2 = common.build(tmp, "build-2")
        rows.append(event(host, "new build", clients, lambda: deploy(settings(source=build2))))
        env2 = settings(source=build2, env={"RELEASE_NOTE": "env-2"})
        rows.append(event(host, "env change", clients, lambda: deploy(env2)))
        inventory = common.write_inventory(INSTANCE, tmp / "rollback.py", data=env2)
        rows.append(event(host, "rollback", clients,
                          lambda: common.run(common.BIN / "ssedeploy", "rollback", inventory, env=env, timeout=900)))
        facts = common.machine(host)
    markdown, data = summary(rows, facts)
    data["wall_s"] = round(time.monotonic() - started, 1)
    common.publish(stem, "release", markdown, data)


if __name__ == "__main__":
    main()
