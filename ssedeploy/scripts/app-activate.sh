#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Switch an app to a release (or back to the previous one), restart it and check it;
# if the check fails, switch back and restart the one that worked. Run by systemd-run
# as a transient unit, so a dropped SSH connection cannot cut it in half.
# Usage: app-activate.sh APP_DIR UNIT RELEASE|--previous KEEP PORT HEALTH_PATH SSE_PATH CHECK_JS
#   CHECK_JS: app-check.js on the host (its path comes from Python, like APP_DIR)
#
# Crash safety: links change only by rename, so `current` always names a whole release (or
# is absent before the first one). Before the first link changes, APP_DIR/activate-in-progress
# records where `current` and `previous` pointed; it is removed once the app runs a checked
# release or has been switched back. A run that finds it puts both links back first, then
# activates as asked (and restarts the unit, whose state it cannot know).
app_dir=$1 unit=$2 target=$3 keep=$4 port=$5 health=$6 sse=$7 check_js=$8
journal=activate-in-progress

# Tests only: SSEDEPLOY_FAULT_AT=N kills this script at point N (as a power cut would);
# N:fail makes point N a failed command. Production never sets it.
fault() {
    case ${SSEDEPLOY_FAULT_AT:-} in
        "$1") kill -9 $$ ;;
        "$1:fail") echo "ssedeploy: fault injected at point $1" >&2; return 1 ;;
    esac
}

# Where LINK points, or nothing when it does not exist.
link_of() { if [ -L "$1" ]; then readlink "$1"; fi; }

# point LINK TARGET POINT: switch LINK to TARGET by a rename (fault POINT in between); no TARGET removes LINK.
point() {
    if [ -z "$2" ]; then
        rm -f "$1"
    else
        ln -sfT "$2" "$1.new"
        fault "$3"
        mv -fT "$1.new" "$1"
    fi
}

check() { node "$check_js" "$port" "$health" "$sse" 30; }

cd "$app_dir" || exit 2
rm -rf current.new previous.new "$journal.tmp" .releases-by-age releases/.pruning-*

if [ -e "$journal" ]; then
    echo "ssedeploy: an earlier activation in $app_dir was cut short: putting current and previous back first" >&2
    fault 1
    was_current= was_previous=
    while IFS='=' read -r key value || [ -n "$key" ]; do
        case $key in current) was_current=$value ;; previous) was_previous=$value ;; esac
    done < "$journal"
    point current "$was_current" 2
    point previous "$was_previous" 3
    rm -f "$journal"
    fault 4
fi

old=$(link_of current)
old_previous=$(link_of previous)
if [ "$target" = "--previous" ]; then
    new=$old_previous
    if [ -z "$new" ] || [ ! -d "$new" ]; then
        echo "ssedeploy: $app_dir has no previous release to roll back to" >&2
        exit 1
    fi
else
    new="releases/$target"
    if [ ! -d "$new" ]; then
        echo "ssedeploy: $app_dir/$new is not on the host" >&2
        exit 1
    fi
fi

printf 'current=%s\nprevious=%s\n' "$old" "$old_previous" > "$journal.tmp"
fault 5
mv -fT "$journal.tmp" "$journal"
point current "$new" 6
fault 7
if [ -n "$old" ] && [ "$old" != "$new" ]; then point previous "$old" 8; fi
fault 9

# A failed restart is a failed check: both switch back.
if systemctl restart "$unit" && check; then
    fault 10
    rm -f "$journal"
    fault 11
    # Keep the newest KEEP releases, never the live or the previous one. Rename first so a cut
    # removal leaves a .pruning-* the next run deletes, never a partial release.
    ls -1t releases > .releases-by-age
    n=0
    while IFS= read -r r || [ -n "$r" ]; do
        n=$((n + 1))
        [ "$n" -gt "$keep" ] || continue
        case "releases/$r" in "$(link_of current)" | "$(link_of previous)") continue ;; esac
        mv -T "releases/$r" "releases/.pruning-$r"
        fault 12
        rm -rf "releases/.pruning-$r"
    done < .releases-by-age
    rm -f .releases-by-age
    exit 0
fi
fault 13
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    point current "$old" 14
    fault 15
    point previous "$new" 16
    if systemctl restart "$unit" && check; then state="and it passes its check"; else state="BUT IT FAILS ITS CHECK TOO"; fi
    fault 17
    rm -f "$journal"
    echo "ssedeploy: $new failed its check: switched back to $old and restarted $unit, $state" >&2
else
    rm -f current  # so the next run tries again instead of finding it "live"
    fault 18
    rm -f "$journal"
    echo "ssedeploy: $new failed its check and there is no earlier release to go back to" >&2
fi
exit 1
