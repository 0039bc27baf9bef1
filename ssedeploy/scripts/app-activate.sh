#!/bin/sh
# Switch an app to a release (or back to the previous one), restart it and check it;
# if the check fails, switch back and restart the one that worked. Run by systemd-run
# as a transient unit, so a dropped SSH connection cannot cut it in half.
# Usage: app-activate.sh APP_DIR UNIT RELEASE|--previous KEEP PORT HEALTH_PATH SSE_PATH
set -u
app_dir=$1 unit=$2 target=$3 keep=$4 port=$5 health=$6 sse=$7
cd "$app_dir" || exit 2
old=$(readlink current 2>/dev/null || true)
if [ "$target" = "--previous" ]; then
    new=$(readlink previous 2>/dev/null || true)
    [ -n "$new" ] && [ -d "$new" ] || { echo "ssedeploy: $app_dir has no previous release to roll back to" >&2; exit 1; }
else
    new="releases/$target"
fi

point() { ln -sfn "$2" "$1.new" && mv -T "$1.new" "$1"; }
check() { node /var/lib/ssedeploy/app-check.js "$port" "$health" "$sse" 30; }

point current "$new"
[ -n "$old" ] && [ "$old" != "$new" ] && point previous "$old"
systemctl restart "$unit"
if check; then
    # Keep the newest KEEP releases, never the live or the previous one.
    ls -1t releases | tail -n "+$((keep + 1))" | while IFS= read -r r; do
        case "releases/$r" in "$(readlink current)"|"$(readlink previous)") ;; *) rm -rf "releases/$r" ;; esac
    done
    exit 0
fi
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    point current "$old"
    point previous "$new"
    systemctl restart "$unit"
    if check; then state="and it passes its check"; else state="BUT IT FAILS ITS CHECK TOO"; fi
    echo "ssedeploy: $new failed its check: switched back to $old and restarted $unit, $state" >&2
else
    rm -f current  # so the next run tries again instead of finding it "live"
    echo "ssedeploy: $new failed its check and there is no earlier release to go back to" >&2
fi
exit 1
