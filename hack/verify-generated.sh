#!/usr/bin/env bash
# Fails when the generated deepcopy code or CRD manifests differ from what controller-gen makes
# from api/ now. Run `make generate` to fix. Needs $CONTROLLER_GEN (make verify sets it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
gen=${CONTROLLER_GEN:-bin/controller-gen}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$gen" object paths=./api/... output:object:dir="$tmp/object"
"$gen" crd paths=./api/... output:crd:artifacts:config="$tmp/crd"
status=0
diff -u api/v1/zz_generated.deepcopy.go "$tmp/object/zz_generated.deepcopy.go" || status=1
diff -ru config/crd "$tmp/crd" || status=1
if [[ $status -ne 0 ]]; then
	echo "generated files are stale: run 'make generate' and commit the result" >&2
	exit 1
fi
echo "generated files are up to date"
