#!/usr/bin/env bash
# The library without the server: in a fresh virtual environment, install torch the way the Makefile does,
# then `pip install .` (not editable, no extras) and check that
#   - the server's dependencies are absent (import fastapi / import celery fail) and `import simprune` works;
#   - `simprune prune` prunes a tiny random cifar_resnet20 checkpoint and writes report.json;
#   - `simprune serve` answers with the one-line server-extra hint and exit code 2.
# Run by .ci/run before `make test`, and by `make check-lib`. Everything lives in a temp dir, removed at the end.
# The package is built from a copy of its sources (pyproject.toml, setup.py, README.md, simprune/, app/,
# worker/, alembic/): an in-tree build would leave build/ in the repository. Every check runs with the temp
# dir as working directory, so nothing is imported from the repository by accident.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-python3}"
START=$(date +%s)
TMP="$(mktemp -d "${TMPDIR:-/tmp}/simprune-libcheck.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

say() { printf 'lib-only check: %s\n' "$*"; }
fail() { printf 'lib-only check FAILED: %s\n' "$*" >&2; exit 1; }

# the torch pins of the Makefile (one place to change them)
TORCH_PINS="$(grep -o 'pip install -q torch==[^ ]* torchvision==[^ ]*' "$REPO/Makefile" | head -1 | sed 's/^pip install -q //')"
[ -n "$TORCH_PINS" ] || fail "no 'pip install -q torch==... torchvision==...' line in the Makefile"

say "sources -> $TMP/src"
mkdir -p "$TMP/src"
(cd "$REPO" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' \
    pyproject.toml setup.py README.md simprune app worker alembic) | tar -xf - -C "$TMP/src"

say "fresh venv ($("$PY" --version 2>&1))"
"$PY" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
pip_install() {  # quiet unless it fails (the local indexes make pip chatty)
    if ! "$VPY" -m pip install -q --disable-pip-version-check --no-compile "$@" >"$TMP/pip.log" 2>&1; then
        cat "$TMP/pip.log" >&2
        fail "pip install $*"
    fi
}
say "pip install ${TORCH_PINS} (as the Makefile)"
# shellcheck disable=SC2086  # the pins are two words
pip_install $TORCH_PINS
say "pip install . (no extras, not editable)"
(cd "$TMP/src" && pip_install .)

cd "$TMP"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
for mod in fastapi celery; do
    if "$VPY" -c "import $mod" 2>/dev/null; then
        fail "'import $mod' works: the base install pulls in a server dependency"
    fi
done
"$VPY" -c "import simprune; print('simprune', simprune.__version__)" || fail "import simprune"

say "a random cifar_resnet20 checkpoint, then simprune prune"
"$VPY" - <<'EOF'
import safetensors.torch
import simprune

safetensors.torch.save_file(simprune.build_model("cifar_resnet20").state_dict(), "w.safetensors")
EOF
"$TMP/venv/bin/simprune" prune --arch cifar_resnet20 --weights w.safetensors --method l1 \
    --target-flops-reduction 0.3 --out out || fail "simprune prune exited with $?"
[ -s out/report.json ] || fail "simprune prune wrote no out/report.json"

say "simprune serve without the server extra"
set +e
MSG="$("$TMP/venv/bin/simprune" serve --no-auth 2>&1 >/dev/null)"
RC=$?
set -e
[ "$RC" -eq 2 ] || fail "simprune serve exited with $RC, expected 2 (stderr: $MSG)"
case "$MSG" in
    *"error: the server commands need the server extra: pip install 'simprune[server]'"*) ;;
    *) fail "simprune serve did not print the server-extra hint: $MSG" ;;
esac
[ "$(printf '%s\n' "$MSG" | wc -l)" -eq 1 ] || fail "simprune serve printed more than one line: $MSG"
"$TMP/venv/bin/simprune" submit --help >/dev/null || fail "simprune submit --help"

say "OK in $(( $(date +%s) - START )) s"
