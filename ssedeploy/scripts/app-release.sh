#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Release an app without stopping what serves: start RELEASE on the idle port, check it there before any
# client can reach it, switch nginx's upstream to it (staged swap, nginx -t, graceful reload, revision
# proven), then drain the old instance: a transient timer stops it after DRAIN seconds (SIGTERM: the app
# ends its streams with a short retry:, and browsers come back to the new instance with Last-Event-ID).
# Run by systemd-run as a transient unit, so a dropped SSH connection cannot cut it in half.
#
# Usage: app-release.sh --record APP_DIR RELEASE PORT   (see record below),
#        app-release.sh --drain APP_DIR OLD_UNIT OLD_TIMER DRAIN KEEP NODE_ROOT   (steps 5-7 alone), or
#        app-release.sh [--hold] APP_DIR RELEASE IDLE IDLE_UNIT IDLE_TIMER OLD_UNIT OLD_TIMER DRAIN KEEP NODE_ROOT
#                       NGINX FETCH CHECK...
#   --hold: stop after step 4 (a cluster's app host: its proxies switch to the recorded port, then --drain);
#   IDLE: the idle instance's port; *_UNIT: the instances' units (OLD_UNIT `-`: none serves); *_TIMER: the
#   name of the transient timer that drains each (ssedeploy/instances.py names them all);
#   NODE_ROOT: where the official Node builds live (each release links the one it runs as .ssedeploy-node);
#   NGINX: `-` (no nginx yet: nothing to switch) or STAGE:BACKUPS:LIVE:STATE for nginx-swap.sh, and
#   FETCH: shell that prints the loopback revision response, for revision-wait.sh (both in STATE);
#   CHECK: HOST HEALTH_PATH TIMEOUT_S CHECK_JS SSE_PATH... for app-check.js (the port is IDLE).
#
# Crash safety: nothing here stops or changes what nginx sends to before the switch; the switch is one
# validated swap and a reload. Cut anywhere, the host still serves, and the next run reads which port nginx
# serves and converges from there (ssedeploy/instances.py): it restarts the release on the idle port, or
# stops an old instance nothing drains any more.

# Tests only: SSEDEPLOY_FAULT_AT=N kills this script at point N (as a power cut would);
# N:fail makes point N a failed command. Production never sets it.
fault() {
    case ${SSEDEPLOY_FAULT_AT:-} in
        "$1") kill -9 $$ ;;
        "$1:fail") echo "ssedeploy: fault injected at point $1" >&2; return 1 ;;
    esac
}

link_of() { if [ -L "$1" ]; then readlink "$1"; fi; }

# point LINK TARGET POINT: switch LINK to TARGET by a rename (fault POINT in between).
point() {
    ln -sfT "$2" "$1.new"
    fault "$3"
    mv -fT "$1.new" "$1"
}

# record RELEASE PORT: RELEASE went live on PORT: `current` names it, `previous` what it named, and the
# history says when (fault points 10-11); `live` names PORT.
record() {
    # `live`: the port to send to (in a cluster, what the proxies follow); written whole by a rename.
    printf '%s\n' "$2" > live.new
    mv -f live.new live
    was=$(link_of current)
    if [ -n "$was" ] && [ "$was" != "releases/$1" ]; then point previous "$was" 10; fi
    point current "releases/$1" 11
    printf '%s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" >> history
}

# check_idle SSE_PATH...: app-check.js on the idle instance; given up at once if the instance exits meanwhile
# (systemd restarts it: an app that dies at start fails now, not after the check's whole timeout).
check_idle() {
    restarts=$(systemctl show -p NRestarts --value "$unit" 2>/dev/null || true)
    "releases/$release/.ssedeploy-node/bin/node" "$check_js" "$host" "$idle" "$health" "$timeout" "$@" &
    checker=$!
    while kill -0 "$checker" 2>/dev/null; do
        now=$(systemctl show -p NRestarts --value "$unit" 2>/dev/null || true)
        if [ "$now" != "$restarts" ]; then
            kill "$checker" 2>/dev/null || true
            wait "$checker" 2>/dev/null || true
            echo "app check failed on $host:$idle: the app exited (systemd restarted it $now times)" >&2
            return 1
        fi
        sleep 0.2
    done
    wait "$checker"
}

# drain_and_prune: steps 5-7, after the switch (or, in a cluster, after every proxy switched).
drain_and_prune() {
    # 5. Drain the old instance: stopped after DRAIN seconds by a transient timer that outlives this step.
    if [ -n "$old_unit" ]; then
        systemctl stop "$old_timer.timer" "$old_timer.service" 2>/dev/null || true
        systemctl reset-failed "$old_timer.timer" "$old_timer.service" 2>/dev/null || true
        if [ "$drain" -gt 0 ]; then
            systemd-run --quiet --unit="$old_timer" --on-active="$drain" --timer-property=AccuracySec=100ms \
                systemctl stop "$old_unit"
        else
            systemctl stop --no-block "$old_unit"
        fi
    fi
    fault 13

    # 6. Keep the newest KEEP releases, never one that current, previous or an instance names. Rename first
    #    so a cut removal leaves a .pruning-* the next run deletes, never a partial release.
    in_use=" $(link_of current) $(link_of previous) "
    for l in instances/*; do [ -L "$l" ] && in_use="$in_use$(readlink "$l" | sed 's|^\.\./||') "; done
    ls -1t releases > .releases-by-age
    n=0
    while IFS= read -r r || [ -n "$r" ]; do
        n=$((n + 1))
        [ "$n" -gt "$keep" ] || continue
        case $in_use in *" releases/$r "*) continue ;; esac
        mv -T "releases/$r" "releases/.pruning-$r"
        fault 14
        rm -rf "releases/.pruning-$r"
    done < .releases-by-age
    rm -f .releases-by-age

    # 7. Keep only the Node builds a kept release runs (renamed first, like a release).
    if [ -d "$node_root" ]; then
        used=" "
        for l in releases/*/.ssedeploy-node; do [ -L "$l" ] && used="$used$(readlink "$l") "; done
        rm -rf "$node_root"/.install-*  # a cut download (the deploy lock keeps runs apart)
        for n in "$node_root"/v*; do
            [ -d "$n" ] || continue
            case $used in *" $n "*) continue ;; esac
            gone="$node_root/.pruning-${n##*/}"
            mv -T "$n" "$gone"
            fault 15
            rm -rf "$gone"
        done
    fi
}

# `app-release.sh --record APP_DIR RELEASE PORT`: only that, for a run that finds a release live that a run
# which died after the switch did not record (ssedeploy/operations/app.py: app_settle).
if [ "$1" = --record ]; then
    cd "$2"
    record "$3" "$4"
    exit 0
fi
# `app-release.sh --drain ...`: a cluster's app host once every proxy sends to its new instance.
if [ "$1" = --drain ]; then
    app_dir=$2 old_unit=$3 old_timer=$4 drain=$5 keep=$6 node_root=$7
    [ "$old_unit" != - ] || old_unit=
    cd "$app_dir"
    drain_and_prune
    exit 0
fi
hold=
if [ "$1" = --hold ]; then hold=1; shift; fi

app_dir=$1 release=$2 idle=$3 unit=$4 idle_timer=$5 old_unit=$6 old_timer=$7 drain=$8 keep=$9
shift 9
node_root=$1 nginx=$2 fetch=$3
shift 3
host=$1 health=$2 timeout=$3 check_js=$4
shift 4  # the rest: the SSE paths
[ "$old_unit" != - ] || old_unit=

cd "$app_dir" || exit 2
[ -d "releases/$release" ] || { echo "ssedeploy: $app_dir/releases/$release is not on the host" >&2; exit 1; }
mkdir -p instances
rm -f instances/*.new current.new previous.new live.new
rm -rf .releases-by-age releases/.pruning-* "$node_root"/.pruning-*
# A release made before releases linked their Node ran the distro's.
[ -L "releases/$release/.ssedeploy-node" ] || ln -s /usr "releases/$release/.ssedeploy-node"

# 1. The idle port: end a drain still running there, or what a run that died started (SIGTERM: its
#    streams get a short retry: and come back to the live instance).
systemctl stop "$idle_timer.timer" "$idle_timer.service" 2>/dev/null || true
systemctl stop "$unit"
systemctl reset-failed "$unit" 2>/dev/null || true
fault 1

# 2. Start the release there and check it before any client can reach it.
point "instances/$idle" "../releases/$release" 2
fault 3
if ! systemctl start "$unit" || ! check_idle "$@"; then
    fault 4
    systemctl stop "$unit" || true
    echo "ssedeploy: release $release failed its check on port $idle and was stopped; it got no traffic, and what served before still serves. Its last log lines:" >&2
    journalctl -u "$unit" -n 15 --no-pager -o cat >&2 || true
    exit 1
fi
# Enabled before nginx may name it: a power cut from here on boots the instance nginx's files send to.
systemctl enable --quiet "$unit"
fault 5

# 3. Switch nginx's upstream to it: a staged swap that nginx -t checks (restoring the old tree if not),
#    a graceful reload, and proof that the new workers serve the new revision.
if [ "$nginx" != - ]; then
    IFS=: read -r stage backups live state <<EOF
$nginx
EOF
    want=$(cat "$stage/revision")
    # The fault point numbers are this script's, not the swap's.
    if ! SSEDEPLOY_FAULT_AT= /bin/sh "$state/nginx-swap.sh" "$stage" "$backups" "$live" "$state"; then
        if [ "$(cat "$state/revision" 2>/dev/null)" = "$want" ]; then
            # Only its cleanup failed: the tree naming port $idle is live and tested. Go on.
            echo "ssedeploy: the nginx swap failed after its new tree went live (above); going on with the switch" >&2
        else
            systemctl disable --quiet "$unit" 2>/dev/null || true
            systemctl stop "$unit" || true
            echo "ssedeploy: nginx refused the switch to port $idle (above); release $release was stopped, nothing changed" >&2
            exit 1
        fi
    fi
    fault 6
    if systemctl is-active --quiet nginx; then systemctl reload nginx; else systemctl start nginx; fi
    fault 7
    # Until the new workers answer, old ones still send to the old instance: it keeps running.
    /bin/sh "$state/revision-wait.sh" "$state/revision" 10 "$fetch"
fi
fault 8

# 4. Record it: the old instance no longer starts at boot; current/previous; the history.
if [ -n "$old_unit" ]; then systemctl disable --quiet "$old_unit" 2>/dev/null || true; fi
fault 9
record "$release" "$idle"
fault 12
# A cluster's app host stops here: its proxies switch to `live` first, then --drain (roles/cluster.py).
[ -z "$hold" ] || exit 0
drain_and_prune
