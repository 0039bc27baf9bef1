#!/bin/bash
set -euo pipefail  # stop on the first failed command or unset variable
# Hold the host's deploy lock for as long as this run's SSH channel feeds it. Bash, not sh:
# the lease needs `read -t`; deploy_lock.py runs it with `bash -c` on its own channel.
# Usage: deploy-lock.sh LOCK_FILE OWNER_FILE -x|-s WAIT_S BUSY_STATUS ME LEASE_S
# Prints "waiting HOLDER" while it waits, "locked" once held, "busy HOLDER" (exit BUSY_STATUS)
# when WAIT_S passed; releases when stdin closes or nothing arrives for LEASE_S seconds.
lock=$1 owner=$2 mode=$3 wait=$4 busy=$5 me=$6 lease=$7

holder() { if [ -r "$owner" ]; then cat "$owner"; fi; }

exec 9>>"$lock"
status=0
flock -n -E "$busy" "$mode" 9 || status=$?
if [ "$status" = "$busy" ]; then
    echo "waiting $(holder)"
    status=0
    flock -w "$wait" -E "$busy" "$mode" 9 || status=$?
    if [ "$status" = "$busy" ]; then echo "busy $(holder)"; fi
fi
[ "$status" = 0 ] || exit "$status"  # busy, or flock's own error
if [ "$mode" != -s ]; then echo "$me" > "$owner"; fi
logger -t ssedeploy "deploy lock ($mode) taken by $me"
echo locked
while read -t "$lease" -r _; do :; done
logger -t ssedeploy "deploy lock ($mode) released by $me"
