# shellcheck shell=bash
# Running a systemd unit's ExecStart= as systemd would, on a machine where
# systemd is not PID 1 (the test machine): sourced by scripts/test-packages
# and scripts/test-install-guide.
#
# unit_exec UNIT_FILE NOTIFY_SOCKET [EXTRA ARGS...] execs (so run it in a
# subshell or in the background) the unit's ExecStart= with its User= and
# Group=, capabilities (bounding set and ambient), no_new_privs, umask,
# working directory /, a clean environment with NOTIFY_SOCKET (empty: none),
# inside a mount namespace that applies ProtectSystem=strict, PrivateTmp=
# and ProtectHome= (no seccomp filter: SystemCallFilter= is checked by
# systemd-analyze verify only). The process keeps the PID of the caller's
# subshell: the subshell execs env, env execs unshare, unshare execs sh,
# sh execs setpriv, setpriv execs the binary.

# The unit's value of KEY (last assignment wins, as in systemd).
unit_value() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

# CAP_NET_ADMIN CAP_NET_RAW -> -all,+net_admin,+net_raw (setpriv's spelling).
setpriv_caps() {
    local caps="-all" c
    for c in $1; do
        caps+=",+$(echo "${c#CAP_}" | tr '[:upper:]' '[:lower:]')"
    done
    echo "$caps"
}

# The file-system sandbox, as near as a shell gets: every mount read-only
# except /dev, /proc, /sys and the StateDirectory= (ProtectSystem=strict),
# empty /tmp and /var/tmp (PrivateTmp=), empty /home, /root and /run/user
# (ProtectHome=). Arguments: strict private_tmp protect_home state_dir, then
# the command.
# shellcheck disable=SC2016 # expanded by the sandbox's own shell
UNIT_SANDBOX='
strict=$1 private_tmp=$2 protect_home=$3 state=$4
shift 4
if [ -n "$state" ]; then mount --bind "$state" "$state"; fi
if [ "$strict" = strict ]; then
    awk "{print \$5}" /proc/self/mountinfo | sort -u | while read -r m; do
        case $m in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$state") continue ;; esac
        mount -o remount,bind,ro "$m"
    done
fi
if [ "$private_tmp" = yes ]; then
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    mount -t tmpfs -o mode=1777 tmpfs /var/tmp
fi
if [ "$protect_home" = yes ]; then
    for d in /home /root /run/user; do
        if [ -d "$d" ]; then mount -t tmpfs -o ro,mode=0755 tmpfs "$d"; fi
    done
fi
exec "$@"'

unit_exec() { # UNIT_FILE NOTIFY_SOCKET [EXTRA ARGS...]
    local unit=$1 notify=$2
    shift 2
    local user group ambient bounding exec nnp=() state="" env
    user=$(unit_value "$unit" User)
    group=$(unit_value "$unit" Group)
    ambient=$(setpriv_caps "$(unit_value "$unit" AmbientCapabilities)")
    bounding=$(setpriv_caps "$(unit_value "$unit" CapabilityBoundingSet)")
    exec=$(unit_value "$unit" ExecStart)
    [ "$(unit_value "$unit" NoNewPrivileges)" = yes ] && nnp=(--no-new-privs)
    [ -n "$(unit_value "$unit" StateDirectory)" ] && state=/var/lib/$(unit_value "$unit" StateDirectory)
    env=(PATH=/usr/sbin:/usr/bin:/sbin:/bin)
    [ -n "$notify" ] && env+=(NOTIFY_SOCKET="$notify")
    cd / || return 1
    umask "$(unit_value "$unit" UMask)"
    # shellcheck disable=SC2086 # ExecStart= is split into words as systemd does
    exec env -i "${env[@]}" \
        unshare --mount --propagation private -- sh -c "$UNIT_SANDBOX" sandbox \
        "$(unit_value "$unit" ProtectSystem)" "$(unit_value "$unit" PrivateTmp)" \
        "$(unit_value "$unit" ProtectHome)" "$state" \
        setpriv --reuid "$user" --regid "$group" --init-groups \
        --inh-caps "$ambient" --ambient-caps "$ambient" --bounding-set "$bounding" \
        "${nnp[@]}" -- $exec "$@"
}

# systemd's side of Type=notify: receives on the datagram socket PATH (made
# writable for the service's user) and prints each message as one line.
# Runs until killed; `unit_notify_listener PATH &` leaves python's own PID in
# $! (it execs), so that killing that PID stops it.
unit_notify_listener() { # PATH
    exec python3 - "$1" <<'PY'
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
while True:
    print(s.recv(4096).decode().strip().replace("\n", " "), flush=True)
PY
}
