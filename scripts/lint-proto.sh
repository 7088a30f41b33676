#!/usr/bin/env bash
# Lints the gRPC contract in proto/ with buf: `buf lint` (rules from proto/buf.yaml,
# STANDARD) and `buf format --diff --exit-code` (canonical formatting). Exits non-zero
# and prints the findings when either fails.
#
#   scripts/lint-proto.sh          # check
#   scripts/lint-proto.sh --fix    # rewrite the files in buf's canonical format, then lint
#
# Uses the pinned buf from .tools/bin (installed by scripts/install-tools.sh if missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"${ROOT}/scripts/install-tools.sh" >/dev/null
BUF="${ROOT}/.tools/bin/buf"

fix=0
case "${1:-}" in
  "") ;;
  --fix) fix=1 ;;
  *) echo "lint-proto.sh: unknown argument '$1' (use --fix or nothing)" >&2; exit 2 ;;
esac

cd "${ROOT}/proto"
status=0
if [[ "${fix}" -eq 1 ]]; then
  "${BUF}" format --write
fi
if ! "${BUF}" lint; then
  echo "lint-proto.sh: buf lint found problems in proto/ (rules: proto/buf.yaml)" >&2
  status=1
fi
if ! "${BUF}" format --diff --exit-code; then
  echo "lint-proto.sh: proto/ is not in buf's canonical format; run scripts/lint-proto.sh --fix" >&2
  status=1
fi
if [[ "${status}" -eq 0 ]]; then
  echo "proto/: buf lint and buf format clean"
fi
exit "${status}"
