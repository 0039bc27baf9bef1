"""Capacity and latency of concurrent SSE streams: direct to the app, ssedeploy's nginx, stock nginx.

    .venv/bin/python -m bench.capacity            # cases a, b, c: 10,000 streams, 30 s hold, 5 runs; writes README
    .venv/bin/python -m bench.capacity --quick    # 1,000 streams, 10 s hold, 1 run; docs/benchmarks/capacity-quick.*
    .venv/bin/python -m bench.capacity --cases bd --levels 1000 --runs 1  # a piece (docs/benchmarks/capacity-custom.*)

Sandbox instance `bench`, two hosts: bench-1 deployed by deploy.py (cases a, b), bench-2 by
bench/stock_deploy.py (cases c, d). The load client (bench/sse-load.js) runs on the host under test, so
every case has the same placement and latency is measured on one clock. One case runs at a time;
before each, the app and nginx are restarted so CPU and memory figures start from a clean process. The app
runs as two instances (sseapp@PORT.service); case (a) and the restarts use the live one, read on the host.
A run series is one run of every case in turn (a, b, c): each nginx case's p99 is a ratio to (a)'s in its own
series, so a slower minute on the machine weighs on both sides of the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench import common, plots
from ssedeploy.instances import unit_name
from ssedeploy.settings import parse

INSTANCE = "bench"
CLIENT = Path(__file__).with_name("sse-load.js")
REMOTE_DIR = "/tmp/ssedeploy-bench"
RATE = 1000  # connects per second during the ramp
RUNS = 5  # run series in the full benchmark
P99_RATIO = 1.05  # target: an nginx case's p99 over direct's, in the same series
CASES = {
    "a": "(a) direct to the app",
    "b": "(b) ssedeploy's nginx",
    "c": "(c) stock nginx + copied SSE block",
    "d": "(d) stock nginx + plain proxy_pass",
}
URLS = {"a": "http://127.0.0.1:{port}/api/stream", "b": "http://127.0.0.1:80/api/stream",
        "c": "http://127.0.0.1:80/api/stream", "d": "http://127.0.0.1:80/api/stream"}
VARIANT = {"c": "sse", "d": "plain"}
STOCK_PORT = 3000  # where bench/nginx/stock-*.conf proxy to
LOG_ALERTS = ("worker_connections are not enough", "Too many open files")
# Mid-hold, the open files of each nginx worker (two per stream it carries): how reuseport spread the streams.
# --hog: one core's worth of other work on the host for the case's whole run (bounded by `timeout`), to see
# what a busier machine does to each case (what another process, or a heavier load client, would take).
HOG = "(timeout {seconds} sh -c 'while :; do :; done' >/dev/null 2>&1 &) ; "
WORKER_FDS = ("sleep {at}; for pid in $(pgrep -f '^nginx: worker'); do "
              "sudo ls /proc/$pid/fd 2>/dev/null | wc -l; done > {out}")
WAIT_HEALTHY = (
    "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 "
    "&& grep -q ' 200 ' <&3) 2>/dev/null && exit 0; sleep 0.1; done; echo 'no 200 from {port}' >&2; exit 1"
)


def deploy_hosts(tmp: Path, variant: str | None = None, which: tuple[str, ...] = ("1", "2")) -> None:
    """bench-1 with deploy.py, bench-2 with bench/stock_deploy.py; in parallel (first run: both cold)."""
    jobs = {
        "1": (common.write_inventory(INSTANCE, tmp / "h1.py", [f"{INSTANCE}-1"]), "deploy.py", {}),
        "2": (common.write_inventory(INSTANCE, tmp / "h2.py", [f"{INSTANCE}-2"]), "bench/stock_deploy.py",
              {"SSEDEPLOY_BENCH_VARIANT": variant or "sse"}),
    }
    start = time.monotonic()
    procs = {}
    try:
        for key in which:
            inventory, deploy, env = jobs[key]
            procs[key] = subprocess.Popen(
                [str(common.BIN / "pyinfra"), "-y", str(inventory), deploy], cwd=common.REPO, text=True,
                env=dict(os.environ, SSEDEPLOY_SANDBOX=INSTANCE, **env), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)
        for key, proc in procs.items():
            out, _ = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"{jobs[key][1]} on {INSTANCE}-{key} exited {proc.returncode}\n{out[-4000:]}")
            common.log(f"{INSTANCE}-{key}: {jobs[key][1]} {jobs[key][2] or ''} done at {time.monotonic() - start:.1f} s")
    finally:  # on failure or Ctrl-C: end the deploys this started
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_case(host: dict, case: str, streams: int, hold: int, run: int, hog: bool = False) -> dict:
    port = common.live_port(host)
    if case in VARIANT and port != STOCK_PORT:
        raise RuntimeError(f"{host['name']}: the app is live on port {port}, the stock site proxies to {STOCK_PORT}")
    app_unit = unit_name(parse({}).app.name, port)
    units = app_unit if case == "a" else f"nginx.service,{app_unit}"
    # Clean processes for each case; the app must answer before the first connect.
    log_size = common.ssh(host, f"sudo systemctl restart {app_unit} nginx && "
                          f"bash -c {common.quoted(WAIT_HEALTHY.format(port=port))} && "
                          "sudo stat -c %s /var/log/nginx/error.log").strip()
    fds_file = f"{REMOTE_DIR}/worker-fds"
    sampler = WORKER_FDS.format(at=round(streams / RATE + hold / 2), out=fds_file)
    command = (HOG.format(seconds=round(streams / RATE + hold + 5)) if hog else "") + \
        f"rm -f {fds_file}; ({sampler}) & " + common.quoted(
        common.node(port), f"{REMOTE_DIR}/sse-load.js", "--url", URLS[case].format(port=port),
        "--streams", streams, "--rate", RATE, "--hold", hold, "--units", units, "--connect-timeout", 10)
    common.log(f"run {run}, case {case}: {streams:,} streams on {host['name']}, "
               f"ramp {streams / RATE:.0f} s + hold {hold} s")
    result = json.loads(common.ssh(host, command, timeout=streams / RATE + hold + 120))
    worker_fds = [int(n) for n in common.ssh(host, f"cat {fds_file} 2>/dev/null || true").split()]
    tail = f"sudo tail -c +{int(log_size) + 1} /var/log/nginx/error.log"
    alerts = {text: int(common.ssh(host, f"{tail} | grep -c {common.quoted(text)} || true").strip() or 0)
              for text in LOG_ALERTS}
    nginx, app = result["units"].get("nginx.service", {}), result["units"][app_unit]
    per_stream = result.pop("per_stream")
    return {
        "case": case, "run": run, "streams": streams, "healthy": result["healthy"], "p50": result["latency_ms"]["p50"],
        "p99": result["latency_ms"]["p99"], "errors": result["errors"], "nginx_cpu": nginx.get("cpu_pct"),
        "app_cpu": app["cpu_pct"], "nginx_mem": nginx.get("mem_peak_bytes"), "app_mem": app["mem_peak_bytes"],
        "mem_source": app["mem_source"], "log_alerts": alerts, "client": result["client"],
        "client_cpu": result["client"].get("cpu_pct_hold"), "worker_fds": worker_fds if case != "a" else [],
        "unhealthy_sample": [s for s in per_stream if not s["ok"]][:5], "raw": result,
    }


def fmt(value, digits=1, scale=1.0, none="–"):
    return none if value is None else f"{value / scale:.{digits}f}"


def ratios(rows: list[dict]) -> None:
    """Each nginx row's p99 over direct's (case a) at the same level in the same run series."""
    direct = {(r["run"], r["streams"]): r["p99"] for r in rows if r["case"] == "a"}
    for r in rows:
        base = direct.get((r["run"], r["streams"]))
        r["p99_ratio"] = r["p99"] / base if r["case"] != "a" and base and r["p99"] is not None else None


def targets(rows: list[dict], runs: int) -> list[tuple[str, str]]:
    b = [r for r in rows if r["case"] == "b" and r["streams"] == 10_000]
    if not b:
        return [("ssedeploy: 10,000 streams on cadence in every run", "not run at 10,000 streams")]
    held = sum(r["healthy"] == 10_000 for r in b)
    worst = max((r["p99_ratio"] for r in b if r["p99_ratio"] is not None), default=None)
    return [
        (f"ssedeploy: 10,000 streams on cadence in {runs} of {runs} runs",
         f"{common.verdict(held == runs == len(b))} ({held} of {len(b)}: "
         + ", ".join(f"{r['healthy']:,}" for r in b) + ")"),
        (f"ssedeploy: p99 <= {P99_RATIO} x direct's in every run series",
         "no ratio (case a not run)" if worst is None else
         f"{common.verdict(worst <= P99_RATIO)} (worst {worst:.2f} x; "
         + ", ".join(fmt(r["p99_ratio"], 2) for r in b) + ")"),
    ]


def report(rows: list[dict], facts: dict, hold: int, runs: int) -> tuple[str, dict]:
    ratios(rows)
    header = ["case", "run", "streams", "healthy", "p50 ms", "p99 ms", "p99 / direct", "errors", "nginx CPU %",
              "app CPU %", "client CPU %", "nginx RSS MiB", "app RSS MiB", "nginx worker fds (min-max)",
              '"worker_connections are not enough"']
    lines = []
    for r in sorted(rows, key=lambda r: (r["case"], r["streams"], r["run"])):
        errors = ", ".join(f"{kind}: {n:,}" for kind, n in sorted(r["errors"].items())) or "none"
        nginx = r["case"] != "a"
        fds = f"{min(r['worker_fds']):,}-{max(r['worker_fds']):,}" if r["worker_fds"] else "–"
        lines.append([CASES[r["case"]], r["run"], f"{r['streams']:,}", f"{r['healthy']:,}", fmt(r["p50"]),
                      fmt(r["p99"]), fmt(r["p99_ratio"], 2), errors, fmt(r["nginx_cpu"] if nginx else None, 0),
                      fmt(r["app_cpu"], 0), fmt(r["client_cpu"], 0),
                      fmt(r["nginx_mem"] if nginx else None, 0, 2**20), fmt(r["app_mem"], 0, 2**20), fds,
                      f"{r['log_alerts']['worker_connections are not enough']:,}" if nginx else "–"])
    found = targets(rows, runs)
    markdown = "\n".join([
        common.table(header, lines), "",
        *[f"- target {name}: **{outcome}**" for name, outcome in found], "",
        f"{runs} run series, each one run of every case in turn. Streams opened at {RATE:,}/s and held {hold} s "
        "after the ramp; healthy = on cadence: 200, at least (seconds open - 3) events and no gap over 1.5 s; "
        "latency = receipt minus the event's `ts`, all events, same host clock; p99 / direct = the row's p99 over "
        "case (a)'s in the same series. CPU = % of one core over the hold (client: the load client's own); RSS = "
        f"peak of the unit's processes ({rows[0]['mem_source'] if rows else '?'}), sampled every 5 s; nginx worker "
        "fds = open files of each worker mid-hold (two per stream it carries). Client, app and nginx share the "
        "host's cores.",
        "",
        common.machine_line(facts),
    ])
    return markdown, {"machine": facts, "hold_s": hold, "rate": RATE, "runs": runs, "targets": dict(found),
                      "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 streams, 10 s hold, 1 run; no README")
    parser.add_argument("--cases", default="abc", help="subset of abcd (not written to the README)")
    parser.add_argument("--runs", type=int, help=f"run series (default {RUNS}; 1 with --quick)")
    parser.add_argument("--levels", help="comma-separated stream counts (not written to the README)")
    parser.add_argument("--hold", type=int, help="seconds to hold after the ramp")
    parser.add_argument("--hog", action="store_true", help="one core busy on the host during each case "
                        "(not written to the README)")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")] if args.levels else [1000] if args.quick else [10_000]
    hold = args.hold or (10 if args.quick else 30)
    runs = args.runs or (1 if args.quick else RUNS)
    if (any(n > 15_000 or n < 1 for n in levels) or not 1 <= hold <= 300 or set(args.cases) - set(CASES)
            or not 1 <= runs <= 10):
        parser.error("levels 1..15000 (the hosts' fd limit is 20000), hold 1..300 s, cases from abcd, runs 1..10")
    custom = args.cases != "abc" or args.levels or args.hold or args.runs or args.hog
    stem = "capacity-custom" if custom else "capacity-quick" if args.quick else "capacity"

    started = time.monotonic()
    rows = []
    with common.instance(INSTANCE, 2), tempfile.TemporaryDirectory(prefix="ssedeploy-bench-") as tmp:
        tmp = Path(tmp)
        hosts = {h["name"]: h for h in common.hosts(INSTANCE)}
        h1, h2 = hosts[f"{INSTANCE}-1"], hosts[f"{INSTANCE}-2"]
        need = tuple(k for k, cs in (("1", "ab"), ("2", "cd")) if set(cs) & set(args.cases))
        first_stock = next((c for c in args.cases if c in VARIANT), "c")
        deploy_hosts(tmp, VARIANT.get(first_stock), need)
        for h in (h1, h2):
            common.ssh(h, f"mkdir -p {REMOTE_DIR} && cat > {REMOTE_DIR}/sse-load.js", input=CLIENT.read_text())
        facts = common.machine(h1 if "1" in need else h2)
        variant = VARIANT.get(first_stock)
        for run in range(1, runs + 1):
            for case in sorted(args.cases):
                if case in VARIANT and VARIANT[case] != variant:
                    variant = VARIANT[case]
                    deploy_hosts(tmp, variant, ("2",))
                for streams in levels:
                    row = run_case(h1 if case in "ab" else h2, case, streams, hold, run, args.hog)
                    common.log(f"  healthy {row['healthy']:,}/{streams:,}, p50 {row['p50']} ms, p99 {row['p99']} "
                               f"ms, client CPU {row['client_cpu']} %, nginx worker fds {row['worker_fds']}, "
                               f"errors {row['errors'] or 'none'}")
                    rows.append(row)
    markdown, data = report(rows, facts, hold, runs)
    data["wall_s"] = round(time.monotonic() - started, 1)
    subtitle = f"{facts['nproc']} cores, nginx {facts.get('nginx')}, Node {facts.get('node')}, {facts['date']}"
    common.publish(stem, "capacity", markdown, data, lambda png: plots.capacity(rows, CASES, png, subtitle))


if __name__ == "__main__":
    main()
