#!/usr/bin/env bash
# The RabbitMQ 4.3 test tier (issue 28): the whole suite against Debian forky's rabbitmq-server
# (4.3.x on Erlang 29) and forky's python3 (3.13+), in a chroot, on a network of its own.
#
#   bash scripts/rabbitmq4.sh build             build the chroot (reused while its stamp holds)
#   bash scripts/rabbitmq4.sh test [ARGS...]    build, then pytest -q inside it: the whole suite,
#                                               or the tests ARGS name (any pytest arguments)
#   bash scripts/rabbitmq4.sh shell             build, then a shell inside it, broker running
#   bash scripts/rabbitmq4.sh clean             remove the chroot (the next build takes forky's
#                                               packages of the day)
#
# `make test-rabbitmq4 ARGS=tests/test_tls.py` runs one file. Root only (debootstrap, chroot,
# network namespaces). Environment: TQ_RABBITMQ4_DIR (the chroot; default
# /var/tmp/taskqueue-forky), TQ_RABBITMQ4_MIRROR (a Debian mirror; default: the one the
# machine's apt uses).
#
# build: `debootstrap --variant=minbase --include=rabbitmq-server forky` with sid's script
# (bookworm's debootstrap has none for forky), the other PACKAGES by the chroot's apt-get, then a
# venv at /opt/tq-venv with requirements-dev.txt, a wheelhouse /opt/tq-wheels (what
# test_install's pip needs: the suite runs offline) and /opt/tq-interop/node_modules (npm ci of
# tests/interop). Built into DIR.new and renamed, so an
# interrupted build is never reused; the stamp (a hash of what went in) decides reuse.
#
# test: a network namespace of its own (loopback only: 127.0.0.1:5672 and epmd's 4369 are its
# own, the machine's broker is never touched) and a private mount namespace (nothing stays
# mounted): proc, sys, dev, a fresh /dev/shm, the run's own /tmp and broker data, the checkout
# bound at the same path. The chroot's
# rabbitmq-server is the main broker (rabbit@localhost on 127.0.0.1:5672), the throwaway nodes
# the tests start are 4.3 too. At the end the node stops, whatever is left in the namespace is
# killed by pid and the namespace goes. The exit status is pytest's.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DIR=${TQ_RABBITMQ4_DIR:-/var/tmp/taskqueue-forky}
SUITE=forky
SCRIPT=/usr/share/debootstrap/scripts/sid  # forky's own is missing from bookworm's debootstrap
VENV=/opt/tq-venv
WHEELS=/opt/tq-wheels
INTEROP=/opt/tq-interop
BUILD_REV=1  # bump when the build steps below change
# Everything the suite drives: the broker, python3 + venv, the browser tests' chromium, the
# partition tests' iptables, the interop tests' amqp-tools, node and npm, the live view's tmux,
# test_install's git and systemd-analyze (systemd), the TLS tests' openssl, ss (iproute2), ps.
PACKAGES=(rabbitmq-server python3 python3-venv python3-pip chromium iptables amqp-tools nodejs
          npm tmux git openssl procps iproute2 make ca-certificates systemd netbase)
PATH_INSIDE=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "rabbitmq4: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and network namespaces need it)"

mirror() {
  if [ -n "${TQ_RABBITMQ4_MIRROR:-}" ]; then echo "$TQ_RABBITMQ4_MIRROR"; return; fi
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
          /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {
                 if ($i !~ /security/) { print $i; exit } else break } }' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || die "no Debian mirror in the machine's apt sources; set TQ_RABBITMQ4_MIRROR"
  echo "$uri"
}

stamp() {
  { echo "rev $BUILD_REV suite $SUITE venv $VENV packages ${PACKAGES[*]}"
    cat "$REPO/requirements.txt" "$REPO/requirements-dev.txt" \
        "$REPO/tests/interop/package.json" "$REPO/tests/interop/package-lock.json"
  } | sha256sum | cut -d' ' -f1
}

# --- build -------------------------------------------------------------------------------
build() {
  local want; want=$(stamp)
  if [ -f "$DIR/.tq-stamp" ] && [ "$(cat "$DIR/.tq-stamp")" = "$want" ]; then
    return 0
  fi
  exec 9>"$DIR.lock"
  flock 9  # one build at a time, and none while a run uses the chroot (runs hold it shared)
  if [ -f "$DIR/.tq-stamp" ] && [ "$(cat "$DIR/.tq-stamp")" = "$want" ]; then
    exec 9>&-
    return 0
  fi
  say "building $DIR (Debian $SUITE with rabbitmq-server; a few minutes)"
  local began=$SECONDS
  if ! command -v debootstrap >/dev/null || [ ! -f "$SCRIPT" ]; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q debootstrap >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
  fi
  local new="$DIR.new" base="rev $BUILD_REV $SUITE $(mirror)"
  # a base system debootstrap finished (an interrupted build's) is kept; nothing else is
  if [ ! -f "$new/.tq-base" ] || [ "$(cat "$new/.tq-base")" != "$base" ]; then
    no_mounts_under "$new"
    rm -rf --one-file-system "$new"
    # debootstrap's own resolver cannot install npm's hundreds of node-* packages (it leaves
    # some unconfigured): the base with the broker here, the rest by the chroot's apt below
    debootstrap --variant=minbase --include=rabbitmq-server,ca-certificates "$SUITE" "$new" \
      "$(mirror)" "$SCRIPT" > "$DIR.build.log" 2>&1 \
      || { tail -20 "$DIR.build.log" >&2; die "debootstrap failed (log: $DIR.build.log)"; }
    echo "$base" > "$new/.tq-base"
  fi
  # pip and npm fetch here, with the machine's network; the tests later run offline.
  mkdir -p "$new/tmp/tq-build"
  cp "$REPO/requirements.txt" "$REPO/requirements-dev.txt" "$REPO/tests/interop/package.json" \
     "$REPO/tests/interop/package-lock.json" "$new/tmp/tq-build/"
  cp -L /etc/resolv.conf "$new/etc/resolv.conf"
  # pip and npm trust what the machine trusts (an egress proxy's CA, say), for the build only
  cp /etc/ssl/certs/ca-certificates.crt "$new/tmp/tq-build/host-ca.pem"
  unshare --mount --propagation private bash -euo pipefail -c '
    new=$1; shift
    mount -t proc proc "$new/proc"
    mount --bind /dev "$new/dev"
    chroot "$new" /usr/bin/env -i PATH="$0" HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
  ' "$PATH_INSIDE" "$new" /bin/bash -euo pipefail -c '
    venv=$1 wheels=$2 interop=$3; shift 3
    # no service starts in here (a postinst would start a broker on the host network)
    printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    apt-get update -q -o Acquire::Check-Valid-Until=false  # a machine clock ahead of the mirror
    apt-get install -y -q --no-install-recommends "$@"
    apt-get clean
    cd /tmp/tq-build
    export PIP_CERT=$PWD/host-ca.pem npm_config_cafile=$PWD/host-ca.pem
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    # the suite installs the package into fresh venvs (test_install): its build backend, its
    # dependencies and the web extra, kept here for an offline pip (PIP_FIND_LINKS)
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check -d "$wheels" \
      setuptools wheel -r requirements-dev.txt
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
      --find-links "$wheels" -r requirements-dev.txt
    mkdir -p "$interop"
    cp package.json package-lock.json "$interop/"
    (cd "$interop" && npm ci --no-audit --no-fund --silent)
    # the main broker as the machine has it: rabbit@localhost, on loopback
    printf "%s\n" "NODENAME=rabbit@localhost" "ERL_EPMD_ADDRESS=127.0.0.1" \
      "export ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"" \
      > /etc/rabbitmq/rabbitmq-env.conf
    echo "listeners.tcp.local = 127.0.0.1:5672" > /etc/rabbitmq/rabbitmq.conf
    rm -rf /tmp/tq-build /root/.cache /root/.npm
    rabbitmq_version=$(dpkg-query -W -f "\${Version}" rabbitmq-server)
    echo "rabbitmq-server $rabbitmq_version, $(python3 --version), node $(node --version)"
  ' bash "$VENV" "$WHEELS" "$INTEROP" "${PACKAGES[@]}" >> "$DIR.build.log" 2>&1 \
    || { tail -20 "$DIR.build.log" >&2; die "the chroot's setup failed (log: $DIR.build.log)"; }
  echo "$want" > "$new/.tq-stamp"
  no_mounts_under "$DIR"
  rm -rf --one-file-system "$DIR"
  mv "$new" "$DIR"
  exec 9>&-
  say "built in $((SECONDS - began)) s: $(tail -1 "$DIR.build.log")"
}

no_mounts_under() {
  if findmnt -rn -o TARGET | grep -q "^$1\(/\|$\)"; then
    die "something is still mounted under $1 (findmnt); not removing it"
  fi
}

# --- running inside ----------------------------------------------------------------------
NS="" RUN=""
stop_namespace() {
  if [ -n "$NS" ]; then
    local pids
    for _ in 1 2 3 4 5 6 7 8 9 10; do  # everything in the namespace is ours: ended by pid
      pids=$(ip netns pids "$NS" 2>/dev/null || true)
      [ -n "$pids" ] || break
      kill -9 $pids 2>/dev/null || true
      sleep 0.5
    done
    ip netns delete "$NS" 2>/dev/null || true
    NS=""
  fi
  if [ -n "$RUN" ]; then  # the mounts went with the last process of the mount namespace
    findmnt -rn -o TARGET | grep -q "^$DIR/" || rm -rf --one-file-system "$DIR$RUN"
    RUN=""
  fi
}

# run MODE ARGS...: MODE test (pytest ARGS) or shell, inside the chroot on a namespace of its own
run() {
  build
  exec 8>"$DIR.lock"
  flock -s 8  # no rebuild replaces the chroot under this run
  NS="tq-rmq4-$$-$RANDOM"
  RUN="/var/tmp/tq-runs/$NS"  # this run's /tmp, broker data and logs: runs at once share none
  trap 'stop_namespace' EXIT
  trap 'stop_namespace; exit 130' INT
  trap 'stop_namespace; exit 143' TERM
  ip netns add "$NS"
  ip netns exec "$NS" ip link set lo up
  local status=0
  # in the background, waited for: a signal to this script is handled at once (the trap)
  ip netns exec "$NS" unshare --mount --propagation private \
    bash "$HERE/rabbitmq4.sh" __inside "$RUN" "$@" &
  wait $! || status=$?
  stop_namespace
  return "$status"
}

inside() {
  local run=$1 mode=$2; shift 2
  mount -t proc proc "$DIR/proc"
  mount -t sysfs sysfs "$DIR/sys"
  mount --bind /dev "$DIR/dev"
  mount --bind /dev/pts "$DIR/dev/pts"
  mount -t tmpfs -o mode=1777 shm "$DIR/dev/shm"
  # this run's own /tmp, /var/lib/rabbitmq (a fresh main broker) and /var/log/rabbitmq
  mkdir -p "$DIR$run"/{tmp,lib,log,interop}
  chmod 1777 "$DIR$run/tmp"
  cp -a "$DIR/var/lib/rabbitmq/.erlang.cookie" "$DIR$run/lib/"
  chown --reference="$DIR/var/lib/rabbitmq" "$DIR$run/lib" "$DIR$run/log"  # the chroot's user
  mount --bind "$DIR$run/tmp" "$DIR/tmp"
  mount --bind "$DIR$run/lib" "$DIR/var/lib/rabbitmq"
  mount --bind "$DIR$run/log" "$DIR/var/log/rabbitmq"
  # the checkout at its own path (after /tmp: a checkout under /tmp stays visible)
  mkdir -p "$DIR$REPO"
  mount --bind "$REPO" "$DIR$REPO"
  # tests/interop with the node_modules built in (npm would write into the checkout, and
  # fetch): a copy of the checkout's files, bound over it in this mount namespace only
  find "$REPO/tests/interop" -mindepth 1 -maxdepth 1 ! -name node_modules \
    -exec cp -a {} "$DIR$run/interop/" \;
  ln -s "$INTEROP/node_modules" "$DIR$run/interop/node_modules"
  mount --bind "$DIR$run/interop" "$DIR$REPO/tests/interop"
  printf "127.0.0.1\tlocalhost %s\n" "$(hostname)" > "$DIR$run/hosts"
  mv -f "$DIR$run/hosts" "$DIR/etc/hosts"
  # pytest's default, the whole suite, unless a test file or directory is named
  local where=(tests) arg
  for arg in "$@"; do
    case "$arg" in -*) continue ;; esac
    if [ -e "$REPO/${arg%%::*}" ] || [ -e "${arg%%::*}" ]; then where=(); break; fi
  done
  local envs=(PATH="$PATH_INSIDE" HOME=/root LANG=C.UTF-8 TERM="${TERM:-xterm}"
              PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELS" PIP_DISABLE_PIP_VERSION_CHECK=1
              PYTHONPYCACHEPREFIX=/var/cache/tq-pycache npm_config_offline=true)
  [ -n "${PYTEST_ADDOPTS:-}" ] && envs+=(PYTEST_ADDOPTS="$PYTEST_ADDOPTS")
  chroot "$DIR" /usr/bin/env -i "${envs[@]}" /bin/bash -uo pipefail -c '
    repo=$1 venv=$2 mode=$3; shift 3
    ctl() { rabbitmqctl -n rabbit@localhost "$@"; }
    rabbitmq-server -detached
    up=""
    for _ in $(seq 60); do  # await_startup fails until the node registers with epmd
      if ctl await_startup --timeout 60 >/dev/null 2>&1; then up=1; break; fi
      sleep 1
    done
    [ -n "$up" ] || { echo "rabbitmq4: the broker did not start; its log:" >&2;
                      tail -30 /var/log/rabbitmq/rabbit@localhost.log >&2; exit 1; }
    otp=$(erl -noshell -eval "io:put_chars(erlang:system_info(otp_release)), halt()." 2>/dev/null)
    echo "rabbitmq4: RabbitMQ $(ctl version 2>/dev/null), Erlang $otp, $("$venv/bin/python" --version)" >&2
    cd "$repo"
    status=0
    if [ "$mode" = shell ]; then
      PS1="(rabbitmq 4.3) \w# " bash --norc -i || status=$?
    else
      "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@" || status=$?
    fi
    ctl stop >/dev/null 2>&1 || true
    epmd -kill >/dev/null 2>&1 || true
    exit "$status"
  ' bash "$REPO" "$VENV" "$mode" "${where[@]}" "$@"
}

case "${1:-}" in
  build) build ;;
  test) shift; run test "$@" ;;
  shell) run shell ;;
  clean)
    no_mounts_under "$DIR"; no_mounts_under "$DIR.new"
    rm -rf --one-file-system "$DIR" "$DIR.new" "$DIR.lock" "$DIR.build.log" ;;
  __inside) shift; inside "$@" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
