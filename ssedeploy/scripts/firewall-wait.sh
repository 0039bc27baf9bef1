#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Wait for firewall-apply.sh in STATE_DIR: until the new rules are `loaded` (the controller may then open its
# new connection), or until its verdict in `result` is `confirmed`; a verdict that is anything else is why it
# put the previous rules back, and fails the step. Inlined by roles/firewall.py with `sh -c`.
# Usage: firewall-wait.sh STATE_DIR loaded|confirmed TIMEOUT_S
state=$1 want=$2 timeout=$3
end=$(($(date +%s) + timeout))
while [ "$(date +%s)" -lt "$end" ]; do
    if [ -s "$state/result" ]; then
        if [ "$(cat "$state/result")" = confirmed ]; then exit 0; fi
        echo "ssedeploy: $(cat "$state/result")" >&2
        exit 1
    fi
    if [ "$want" = loaded ] && [ -e "$state/loaded" ]; then exit 0; fi
    sleep 0.2
done
echo "ssedeploy: firewall-apply.sh did not say it was $want within $timeout s" >&2
exit 1
