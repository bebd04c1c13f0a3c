#!/usr/bin/env bash
# Build one virtual environment per peer of the domain benchmark under .peers/<name> (repo root), idempotently.
# Usage: bash benchmarks/peers/setup_envs.sh [spagcn banksy cellcharter graphst novae]
# Peers never enter the package's own environment (.venv); GPL peers stay in theirs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3.11}"
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(banksy spagcn cellcharter graphst novae)
needs_torch=" spagcn cellcharter graphst novae "
for peer in "${peers[@]}"; do
    req="$here/requirements-$peer.txt"
    env="$root/.peers/$peer"
    [ -f "$req" ] || { echo "no $req" >&2; exit 1; }
    stamp="$env/.built-$(sha256sum "$req" | cut -c1-16)"
    if [ -f "$stamp" ]; then echo "[$peer] up to date: $env"; continue; fi
    echo "[$peer] building $env"
    [ -x "$env/bin/python" ] || "$python" -m venv "$env"
    "$env/bin/python" -m pip install -q --upgrade pip
    # torch first: a bare torch asked for by a peer would otherwise pull a CUDA build of several GB.
    if [[ "$needs_torch" == *" $peer "* ]]; then "$env/bin/python" -m pip install -q torch==2.13.0; fi
    "$env/bin/python" -m pip install -q -r "$req"
    "$env/bin/python" -m pip freeze > "$env/freeze.txt"
    rm -f "$env"/.built-*
    touch "$stamp"
    echo "[$peer] built: $env (pip freeze in $env/freeze.txt)"
done
