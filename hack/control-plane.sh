#!/usr/bin/env bash
# Builds the real control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) from the Go module proxy into a cache directory keyed by their
# versions, and prints that directory on stdout. Progress goes to stderr.
#
# Usage: hack/control-plane.sh [--print-if-built]
# Idempotent: a completion marker is written last, so a half-built directory is rebuilt.
# Nothing is written into the repository. Override the cache root with PODIDENTITY_CACHE.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${PODIDENTITY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/podidentity}
dir="$cache_root/control-plane-k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
marker="$dir/.complete"

if [[ -f "$marker" ]]; then
	echo "$dir"
	exit 0
fi
# --print-if-built: answer without building (tests use it to find the binaries).
if [[ "${1:-}" == "--print-if-built" ]]; then
	exit 1
fi

log() { echo "control-plane: $*" >&2; }
log "building control-plane binaries into $dir (first run only: about 5-8 minutes on 2 cores)"
rm -rf "$dir"
mkdir -p "$dir"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off

# The version ldflags matter: without them the apiserver reports v0.0.0 and kubectl's
# version skew checks break.
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build() { # module-dir output package ldflags
	local start=$SECONDS
	log "  go build $3"
	(cd "$here/$1" && go build -trimpath -ldflags "$4" -o "$tmp/$2" "$3")
	log "  built $2 in $((SECONDS - start))s"
}

build etcdbin etcd go.etcd.io/etcd/server/v3 "-s -w"
build k8sbins kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build k8sbins kubectl k8s.io/kubernetes/cmd/kubectl "$k8s_ldflags"
build k8sbins kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build k8sbins kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"

mv "$tmp"/* "$dir"/
echo "k8s=$K8S_VERSION etcd=$ETCD_VERSION" > "$marker"
log "done"
echo "$dir"
