#!/usr/bin/env bash
# Install each peer DP library into its own virtual environment: their pinned
# versions (an older Polars, PySpark, pandas) conflict with ours and each other.
#
#   bash benchmarks/peers/setup.sh [PEERS_DIR]     # default: $COOPDP_PEERS or ~/.cache/coopdp-peers
#
# A peer that fails to install is reported and left out; the others go on.
# `python -m benchmarks peers` skips a peer whose venv is missing, with the log's last line.
set -u
root="${1:-${COOPDP_PEERS:-$HOME/.cache/coopdp-peers}}"
mkdir -p "$root"
python="${PYTHON:-python3}"

install() {  # install NAME PACKAGE...
    local name="$1"; shift
    local venv="$root/$name" log="$root/$name.log"
    echo "== $name: $*  (log: $log)"
    rm -rf "$venv"
    if "$python" -m venv "$venv" >"$log" 2>&1 \
        && "$venv/bin/pip" install --no-cache-dir "$@" pyarrow >>"$log" 2>&1; then
        "$venv/bin/pip" freeze >"$venv/versions.txt"
        echo "   ok"
    else
        echo "   FAILED: $(tail -n 1 "$log")"
        rm -rf "$venv"
    fi
}

install smartnoise "smartnoise-sql==1.0.10"
install opendp_polars "opendp[polars]"
install tumult "tmlt.analytics==0.21.0"
