#!/usr/bin/env bash
# Installs the pinned code-generation and client tools into <repo>/.tools/bin.
#
#   scripts/install-tools.sh          # install what is missing or at another version
#   scripts/install-tools.sh --force  # reinstall everything
#
# Needs only a Go toolchain (1.26+) and the Go module proxy. Every tool is built from
# source with `go install module@version`; nothing else is downloaded. Idempotent: a tool
# whose binary already carries the pinned module version (read with `go version -m`, no
# network) is left alone, so a second run takes well under a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="${ROOT}/.tools/bin"

# Pinned versions. Bump them here only (and re-run scripts/gen-go.sh).
BUF_VERSION="v1.75.0"                 # github.com/bufbuild/buf
PROTOC_GEN_GO_VERSION="v1.36.12"      # google.golang.org/protobuf (same as clients/go/go.mod)
PROTOC_GEN_GO_GRPC_VERSION="v1.6.2"   # google.golang.org/grpc/cmd/protoc-gen-go-grpc
GRPCURL_VERSION="v1.9.4"              # github.com/fullstorydev/grpcurl

# binary name | package to install | module whose version the binary must carry | version
TOOLS=(
  "buf|github.com/bufbuild/buf/cmd/buf|github.com/bufbuild/buf|${BUF_VERSION}"
  "protoc-gen-go|google.golang.org/protobuf/cmd/protoc-gen-go|google.golang.org/protobuf|${PROTOC_GEN_GO_VERSION}"
  "protoc-gen-go-grpc|google.golang.org/grpc/cmd/protoc-gen-go-grpc|google.golang.org/grpc/cmd/protoc-gen-go-grpc|${PROTOC_GEN_GO_GRPC_VERSION}"
  "grpcurl|github.com/fullstorydev/grpcurl/cmd/grpcurl|github.com/fullstorydev/grpcurl|${GRPCURL_VERSION}"
)

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "install-tools.sh: unknown argument '$1' (use --force or nothing)" >&2; exit 2 ;;
esac

if ! command -v go >/dev/null 2>&1; then
  echo "install-tools.sh: 'go' is not on PATH; install Go 1.26 or newer first" >&2
  exit 1
fi

mkdir -p "${TOOLS_BIN}"

# The module version a Go binary was built from, or nothing if it is absent or not a Go binary.
installed_version() {
  local bin="$1" module="$2"
  [[ -x "${bin}" ]] || return 0
  go version -m "${bin}" 2>/dev/null | awk -v m="${module}" '$1 == "mod" && $2 == m { print $3 }'
}

for entry in "${TOOLS[@]}"; do
  IFS='|' read -r name pkg module version <<<"${entry}"
  bin="${TOOLS_BIN}/${name}"
  have="$(installed_version "${bin}" "${module}")"
  if [[ "${force}" -eq 0 && "${have}" == "${version}" ]]; then
    echo "ok         ${name} ${version}"
    continue
  fi
  echo "installing ${name} ${version}${have:+ (found ${have})} ..."
  # Outside any module, no workspace, no vendoring: `go install pkg@version` resolves the
  # tool's own go.mod through the module proxy.
  (cd "${TOOLS_BIN}" && GOBIN="${TOOLS_BIN}" GOWORK=off GOFLAGS="-mod=mod" \
    go install "${pkg}@${version}")
  have="$(installed_version "${bin}" "${module}")"
  if [[ "${have}" != "${version}" ]]; then
    echo "install-tools.sh: ${name} was installed but reports '${have:-no version}', expected ${version}" >&2
    exit 1
  fi
  echo "ok         ${name} ${version}"
done

echo "tools are in ${TOOLS_BIN}"
