"""Deploy speed: cold bootstrap of a fresh host, no-op re-runs, then 5 hosts in parallel.

    .venv/bin/python -m bench.deploy_speed            # 1 host, then 5; writes README
    .venv/bin/python -m bench.deploy_speed --quick    # docs/benchmarks/deploy-quick.* only
    .venv/bin/python -m bench.deploy_speed --one-host # the 1-host part only (docs/benchmarks/deploy-custom.*)

Sandbox instance `benchd`. Each time is the wall time of `pyinfra -y inventories/sandbox.py deploy.py`
(or of an inventory limited to the new hosts), SSH connects and fact gathering included. A no-op
figure is the median of 3 runs, noted if pyinfra reported any change in them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import common, plots
from ssedeploy import run_results
from ssedeploy.inventory import HTTPS_ENV

INSTANCE = "benchd"
NOOP_RUNS = 3
SANDBOX_INVENTORY = "inventories/sandbox.py"


def deploy(inventory: str | Path) -> tuple[float, int]:
    """Run deploy.py; (seconds, operations that changed something, over all hosts) from the run's results."""
    with tempfile.TemporaryDirectory(prefix="ssedeploy-benchd-results-") as tmp:
        path = Path(tmp) / "results.json"
        start = time.monotonic()
        common.run(common.BIN / "pyinfra", "-y", inventory, "deploy.py",
                   env={"SSEDEPLOY_SANDBOX": INSTANCE, "SSEDEPLOY_RESULTS": str(path),
                        HTTPS_ENV: "0"}, timeout=900)  # plain HTTP, as measured before HTTPS was the default
        seconds = time.monotonic() - start
        results = run_results.load(path)  # raises if the run wrote none: no figure without knowing what changed
    if not results["hosts"]:
        raise RuntimeError(f"{inventory}: the deploy's results list no host")
    return seconds, len(run_results.changes(results))


def noop(inventory: str | Path, label: str) -> tuple[float, list[float], str]:
    """Median of NOOP_RUNS re-runs, and a note of their times (and of any operation that still changed)."""
    runs, changes = [], 0
    for _ in range(NOOP_RUNS):
        seconds, changed = deploy(inventory)
        runs.append(seconds)
        changes = max(changes, changed)
    common.log(f"{label}: {', '.join(f'{s:.1f}' for s in runs)} s, at most {changes} operations changed")
    note = f"median of {', '.join(f'{s:.1f}' for s in runs)} s"
    return statistics.median(runs), runs, note + (f"; **{changes} operations changed** (not a pure no-op)"
                                                  if changes else "; nothing changed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="no README (docs/benchmarks/deploy-quick.*)")
    parser.add_argument("--one-host", action="store_true", help="skip the 5-host part")
    args = parser.parse_args()
    stem = "deploy-custom" if args.one_host else "deploy-quick" if args.quick else "deploy"

    started = time.monotonic()
    rows: list[tuple[str, float, str]] = []
    data: dict = {}
    with common.instance(INSTANCE, 1), tempfile.TemporaryDirectory(prefix="ssedeploy-benchd-") as tmp:
        first = common.hosts(INSTANCE)
        facts_host = first[0]
        cold1, changed = deploy(SANDBOX_INVENTORY)
        common.log(f"cold deploy of 1 host: {cold1:.1f} s ({changed} operations changed)")
        rows.append(("cold deploy, 1 fresh host", cold1, ""))
        noop1, runs1, note = noop(SANDBOX_INVENTORY, "no-op, 1 host")
        rows.append(("no-op re-run, 1 host", noop1, note))
        data |= {"cold_1": cold1, "noop_1_runs": runs1}
        if not args.one_host:
            boot = time.monotonic()
            after = common.up(INSTANCE, 5)
            booted = time.monotonic() - boot
            new = [h["name"] for h in after if h["name"] not in {f["name"] for f in first}]
            cold4, _ = deploy(common.write_inventory(INSTANCE, Path(tmp, "new.py"), new))
            common.log(f"cold deploy of {len(new)} new hosts in parallel: {cold4:.1f} s (boot {booted:.1f} s)")
            rows.append((f"cold deploy, {len(new)} new hosts in parallel", cold4, f"booted in {booted:.1f} s"))
            noop5, runs5, note = noop(SANDBOX_INVENTORY, "no-op, 5 hosts")
            rows.append(("no-op re-run, 5 hosts in parallel", noop5, note))
            data |= {"boot_4": booted, "cold_new": cold4, "new_hosts": new, "noop_5_runs": runs5}
        facts = common.machine(facts_host)

    targets = [("no-op of one host <= 5 s", f"{common.verdict(noop1 <= 5)} ({noop1:.1f} s)")]
    if not args.one_host:
        targets.append(("no-op of 5 hosts <= 1.5 x one host's",
                        f"{common.verdict(noop5 <= 1.5 * noop1)} ({noop5:.1f} s vs {1.5 * noop1:.1f} s)"))
    markdown = "\n".join([
        common.table(["run", "wall time", "note"], [[name, f"{s:.1f} s", note] for name, s, note in rows]), "",
        *[f"- target {name}: **{outcome}**" for name, outcome in targets], "",
        "Wall time of `pyinfra -y inventories/sandbox.py deploy.py` on sandbox hosts (systemd-nspawn, Debian 12, "
        "packages from the machine's archive), SSH and fact gathering included; cold = first run on a freshly "
        f"booted host (apt update, Node and nginx installed). {common.machine_line(facts)}",
    ])
    data |= {"machine": facts, "rows": rows, "targets": dict(targets), "wall_s": round(time.monotonic() - started, 1)}
    subtitle = f"{facts['nproc']} cores, pyinfra {facts['pyinfra']}, nginx {facts.get('nginx')}, {facts['date']}"
    marks = {"no-op re-run, 1 host": 5.0, "no-op re-run, 5 hosts in parallel": 1.5 * noop1}
    common.publish(stem, "deploy", markdown, data,
                   lambda png: plots.deploy([(name, s) for name, s, _ in rows], marks, png, subtitle))


if __name__ == "__main__":
    main()
