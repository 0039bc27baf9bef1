#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Wait for firewall-apply.sh's verdict in RESULT: "confirmed", or why it put the previous rules back.
# Inlined by roles/firewall.py with `sh -c`. Usage: firewall-wait.sh RESULT TIMEOUT_S
file=$1 timeout=$2
end=$(($(date +%s) + timeout))
while [ "$(date +%s)" -lt "$end" ]; do
    if [ -s "$file" ]; then
        if [ "$(cat "$file")" = confirmed ]; then exit 0; fi
        echo "ssedeploy: $(cat "$file")" >&2
        exit 1
    fi
    sleep 0.2
done
echo "ssedeploy: firewall-apply.sh gave no verdict within $timeout s" >&2
exit 1
