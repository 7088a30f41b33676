#!/usr/bin/env bash
# Generates the Go stubs of the lookalike.v1 contract into clients/go/lookalikev1/
# with `buf generate` and the local, pinned protoc-gen-go and protoc-gen-go-grpc
# (clients/go/buf.gen.yaml; no remote plugins, no network besides installing the tools).
# Then checks that the module builds: `go build ./...` and `go vet ./...` in clients/go.
#
#   scripts/gen-go.sh              # generate, build, vet
#   scripts/gen-go.sh --no-build   # generate only
#
# The generated *.pb.go files are build output (gitignored); run this after every
# change in proto/ and on every fresh checkout before building the Go client.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GO_DIR="${ROOT}/clients/go"

build=1
case "${1:-}" in
  "") ;;
  --no-build) build=0 ;;
  *) echo "gen-go.sh: unknown argument '$1' (use --no-build or nothing)" >&2; exit 2 ;;
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

if [[ "${build}" -eq 1 ]]; then
  # go.mod and go.sum are committed and complete: never let the build edit them.
  export GOFLAGS="-mod=readonly ${GOFLAGS:-}"
  export GOWORK=off
  go build ./...
  go vet ./...
  echo "clients/go: go build and go vet pass"
fi
