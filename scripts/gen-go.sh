#!/usr/bin/env bash
# Generates the Go stubs of the lookalike.v1 contract into clients/go/lookalikev1/
# with `buf generate` and the local, pinned protoc-gen-go and protoc-gen-go-grpc
# (clients/go/buf.gen.yaml; no remote plugins, no network besides installing the tools).
# Then checks that the module builds: `go build ./...` and `go vet ./...` in clients/go.
#
#   scripts/gen-go.sh              # generate, build, vet
#   scripts/gen-go.sh --no-build   # generate only
#   scripts/gen-go.sh --check      # generate, then fail if the committed stubs differ
#
# The generated *.pb.go files are committed (users `go get` the module without running a
# generator); run this after every change in proto/ and commit the result. CI runs --check.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO_DIR="${ROOT}/clients/go"

build=1
check=0
case "${1:-}" in
  "") ;;
  --no-build) build=0 ;;
  --check) check=1 ;;
  *) echo "gen-go.sh: unknown argument '$1' (use --no-build, --check or nothing)" >&2; exit 2 ;;
esac

"${ROOT}/scripts/install-tools.sh" >/dev/null
export PATH="${ROOT}/.tools/bin:${PATH}"

cd "${GO_DIR}"
# Stale files of a removed .proto must not survive: start from an empty output.
rm -f lookalikev1/*.pb.go
buf generate --template buf.gen.yaml
count="$(find lookalikev1 -maxdepth 1 -name '*.pb.go' | wc -l)"
if [[ "${count}" -eq 0 ]]; then
  echo "gen-go.sh: buf generate wrote no .pb.go files into clients/go/lookalikev1" >&2
  exit 1
fi
echo "generated ${count} files in clients/go/lookalikev1"

if [[ "${check}" -eq 1 ]]; then
  stale="$(cd "${ROOT}" && git diff --stat HEAD -- clients/go/lookalikev1 && git ls-files --others --exclude-standard -- clients/go/lookalikev1)"
  if [[ -n "${stale}" ]]; then
    echo "gen-go.sh: the committed Go stubs differ from proto/ (run scripts/gen-go.sh and commit):" >&2
    echo "${stale}" >&2
    exit 1
  fi
  echo "clients/go/lookalikev1: committed stubs match proto/"
fi

if [[ "${build}" -eq 1 ]]; then
  # go.mod and go.sum are committed and complete: never let the build edit them.
  export GOFLAGS="-mod=readonly ${GOFLAGS:-}"
  export GOWORK=off
  go build ./...
  go vet ./...
  echo "clients/go: go build and go vet pass"
fi
