#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# Wait until nginx serves the config revision the swap recorded (a reload is asynchronous:
# old workers answer until new ones take over). Inlined by roles/nginx.py with `sh -c`.
# Usage: revision-wait.sh REVISION_FILE TIMEOUT_S FETCH   (TIMEOUT_S: whole seconds)
#   FETCH: shell command that prints the loopback revision response
file=$1 timeout=$2 fetch=$3
if [ ! -s "$file" ]; then
    echo "ssedeploy: no config revision recorded in $file: the config swap has not completed" >&2
    exit 1
fi
want=$(cat "$file")
nl='
'
end=$(($(date +%s) + timeout))
got=
while :; do
    # Refused or empty while nginx starts: try again until the deadline.
    if got=$(sh -c "$fetch" 2>/dev/null); then
        case "$nl$got$nl" in *"$nl$want$nl"*) exit 0 ;; esac
    fi
    [ "$(date +%s)" -lt "$end" ] || break
    sleep 0.2
done
served=${got##*"$nl"}
echo "ssedeploy: nginx does not serve config revision $want $timeout s after the reload (it serves: ${served:-no answer})" >&2
exit 1
