#!/bin/sh
set -eu  # stop on the first failed command or unset variable
# ACME certificates for nginx: certbot issues them, this script puts them live. Installed on the host as
# /var/lib/ssedeploy/acme-cert.sh: the deploy runs it, and so does certbot's deploy hook on a renewal.
#
#   acme-cert.sh issue WEBROOT DIRECTORY EMAIL CA_BUNDLE CERT_NAME NAME...
#       certbot certonly --webroot for exactly NAME... (CA_BUNDLE: the file certbot trusts for a private
#       CA's directory, or -). Fails with the CA's own reason.
#   acme-cert.sh install LINEAGE DIR
#       Copy LINEAGE's fullchain.pem and privkey.pem to DIR/SERIAL/ and switch the link DIR/live to it if
#       `nginx -t` passes (the previous link is put back if not). Never reloads nginx.
#   acme-cert.sh wait DIR PORT SERVER_NAME TIMEOUT_S
#       Poll until nginx serves DIR/live's serial on 127.0.0.1:PORT for SERVER_NAME (a reload is asynchronous).
#   acme-cert.sh renew LINEAGE DIR PORT SERVER_NAME TIMEOUT_S
#       install, a graceful reload, wait; if nginx does not serve the new serial in time, the previous
#       certificate is put back and nginx reloaded again, and the renewal fails (certbot logs it).
#
# Crash safety: a serial's directory is filled under a temp name and renamed whole, and `live` is replaced by
# renaming a new link over it, so `live` always names a whole pair (old or new). A cut between the switch and
# the reload leaves nginx serving the old serial; the next deploy sees that and reloads.

# Tests only: SSEDEPLOY_FAULT_AT=N kills this script at point N (as a power cut would). Production never sets it.
fault() {
    if [ "${SSEDEPLOY_FAULT_AT:-}" = "$1" ]; then kill -9 $$; fi
}

serial_of() {  # the serial of a PEM certificate file (the first certificate: the leaf of a full chain)
    s=$(openssl x509 -in "$1" -noout -serial)
    echo "${s#serial=}"
}

link() {  # point DIR/live at $2 by one rename (or remove it when $2 is empty)
    if [ -z "$2" ]; then
        rm -f "$1/live"
        return
    fi
    ln -sfn "$2" "$1/.live-new"
    mv -T "$1/.live-new" "$1/live"
}

served_serial() {  # the serial nginx serves on 127.0.0.1:$1 for $2, or nothing
    openssl s_client -connect "127.0.0.1:$1" -servername "$2" </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null | sed 's/^serial=//' || true
}

issue() {
    webroot=$1 directory=$2 email=$3 bundle=$4 name=$5
    shift 5
    [ "$bundle" = - ] || export REQUESTS_CA_BUNDLE="$bundle"
    mkdir -p "$webroot"
    domains=
    for d in "$@"; do domains="$domains -d $d"; done
    log=$(mktemp)
    for attempt in 1 2; do
        # shellcheck disable=SC2086  # one -d per name
        if certbot certonly --non-interactive --agree-tos --email "$email" --server "$directory" \
            --webroot -w "$webroot" --cert-name "$name" --keep-until-expiring $domains >"$log" 2>&1; then
            rm -f "$log"
            return 0
        fi
        # A CA that forgot the saved account (a test CA restarted; certbot 2.1 then fails with "can't set
        # attribute"): the local account is useless, so it goes and certbot registers anew, once.
        server=${directory#https://}
        accounts=${ACME_ACCOUNTS:-/etc/letsencrypt/accounts}/${server%%/*}  # certbot's: accounts/HOST:PORT/PATH/ID
        [ "$attempt" = 1 ] && grep -q "accountDoesNotExist\|can't set attribute" "$log" && [ -d "$accounts" ] || break
        rm -rf "$accounts"
    done
    echo "ssedeploy: the ACME CA $directory did not issue a certificate for $*; certbot said:" >&2
    grep -v '^ *$' "$log" | grep -v '^Saving debug log\|^Ask for help\|^See the logfile' | tail -n 25 >&2 || true
    rm -f "$log"
    return 1
}

install_cert() {
    lineage=$1 dir=$2
    serial=$(serial_of "$lineage/fullchain.pem")
    previous=$(readlink "$dir/live" 2>/dev/null || true)
    mkdir -p "$dir"
    chmod 700 "$dir"
    if [ "$previous" = "$serial" ]; then
        echo "certificate $serial is live"
        return 0
    fi
    if [ ! -d "$dir/$serial" ]; then
        rm -rf "$dir/.new"
        mkdir -m 700 "$dir/.new"
        cp "$lineage/fullchain.pem" "$dir/.new/fullchain.pem"
        fault 1
        (umask 077 && cp "$lineage/privkey.pem" "$dir/.new/privkey.pem")
        mv -T "$dir/.new" "$dir/$serial"
    fi
    fault 2
    link "$dir" "$serial"
    fault 3
    if ! out=$(nginx -t 2>&1); then
        link "$dir" "$previous"
        echo "ssedeploy: nginx -t refused certificate $serial; the previous one (${previous:-none}) is back:" >&2
        echo "$out" >&2
        return 1
    fi
    # Keep the live pair and the one before it (what a failed renewal goes back to).
    for d in "$dir"/*/; do
        d=${d%/}
        case ${d##*/} in "$serial" | "$previous" | live) ;; *) rm -rf "$d" ;; esac
    done
    echo "certificate $serial installed (was: ${previous:-none})"
}

wait_served() {
    dir=$1 port=$2 name=$3 timeout=$4
    want=$(readlink "$dir/live")
    end=$(($(date +%s) + timeout))
    while :; do
        got=$(served_serial "$port" "$name")
        [ "$got" = "$want" ] && return 0
        [ "$(date +%s)" -lt "$end" ] || break
        sleep 0.2
    done
    echo "ssedeploy: nginx does not serve certificate $want for $name on port $port $timeout s after the reload (it serves: ${got:-no answer})" >&2
    return 1
}

renew() {
    lineage=$1 dir=$2 port=$3 name=$4 timeout=$5
    previous=$(readlink "$dir/live" 2>/dev/null || true)
    install_cert "$lineage" "$dir"
    fault 4
    systemctl reload nginx
    if ! wait_served "$dir" "$port" "$name" "$timeout"; then
        link "$dir" "$previous"
        systemctl reload nginx
        echo "ssedeploy: certificate ${previous:-none} is back" >&2
        return 1
    fi
}

command=$1
shift
case $command in
    issue) issue "$@" ;;
    install) install_cert "$@" ;;
    wait) wait_served "$@" ;;
    renew) renew "$@" ;;
    *) echo "acme-cert.sh: unknown command $command" >&2; exit 2 ;;
esac
