#!/usr/bin/env bash
# Regenerates every generated file from its source:
#
#   **/*.proto                  -> *.pb.go and *_grpc.pb.go next to each .proto
#     (outside bin/ and dot folders)
#   apis/<group>/<version>/     -> zz_generated.deepcopy.go in the same package
#     (packages with a         -> install/crds/<group>_<plural>.yaml
#     +groupName in doc.go)    -> apis/client/{clientset,listers,informers}
#
# Usage: hack/generate.sh [ROOT]
#
# ROOT is the source tree to generate in; it defaults to $CAIRN_GENERATE_ROOT,
# then to the repository this script lives in. TestGeneratedCodeIsFresh uses
# it to regenerate into a temporary copy. The tools must be on PATH (make
# generate puts bin/tools first); nothing is downloaded.
#
# Old outputs are removed first, so a deleted type or .proto leaves nothing
# behind. apis/client/ is entirely generated; in install/crds/ only files that
# controller-gen wrote are replaced; every *.pb.go is protoc's.
set -euo pipefail

root=${1:-${CAIRN_GENERATE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
cd "$root"

for tool in protoc protoc-gen-go protoc-gen-go-grpc controller-gen client-gen lister-gen informer-gen; do
	command -v "$tool" >/dev/null || {
		echo "generate.sh: $tool is not on PATH; run 'make tools' (tools land in bin/tools)" >&2
		exit 1
	}
done

module=$(awk '$1 == "module" { print $2; exit }' go.mod)
header=hack/boilerplate.go.txt
client_dir=apis/client
client_pkg=$module/$client_dir

# API packages: directories under apis/ whose doc.go names an API group.
mapfile -t api_dirs < <(grep -rl --include=doc.go '^// +groupName=' apis | xargs -r -n1 dirname | LC_ALL=C sort)
# Protobuf sources anywhere in the tree, except bin/ and dot folders.
source_files() {
	find . \( -path ./bin -o -name '.?*' \) -prune -o -type f -name "$1" -print | sed 's|^\./||' | LC_ALL=C sort
}
mapfile -t protos < <(source_files '*.proto')

echo "generate.sh: removing old outputs"
source_files '*.pb.go' | xargs -r rm -f
find apis -name 'zz_generated.*.go' -delete
rm -rf "$client_dir"
mkdir -p install/crds
for crd in install/crds/*.yaml; do
	if [[ -f $crd ]] && grep -q '^    controller-gen.kubebuilder.io/version:' "$crd"; then
		rm -f "$crd"
	fi
done

if ((${#protos[@]})); then
	echo "generate.sh: protoc (${#protos[@]} files)"
	protoc --proto_path=. \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		"${protos[@]}"
fi

((${#api_dirs[@]})) || { echo "generate.sh: no API packages under apis/"; exit 0; }

# controller-gen takes package paths separated by ';'.
paths=$(printf './%s;' "${api_dirs[@]}")
echo "generate.sh: controller-gen object, crd (${api_dirs[*]})"
controller-gen \
	object:headerFile="$header" \
	crd:headerFile=hack/boilerplate.yaml.txt \
	output:crd:artifacts:config=install/crds \
	paths="${paths%;}"

# The code-generator tools want group/version (client-gen) or full import
# paths (lister-gen, informer-gen).
group_versions=()
api_pkgs=()
for dir in "${api_dirs[@]}"; do
	group_versions+=("${dir#apis/}")
	api_pkgs+=("$module/$dir")
done

echo "generate.sh: client-gen, lister-gen, informer-gen"
client-gen \
	--go-header-file "$header" \
	--clientset-name versioned \
	--input-base "$module/apis" \
	--input "$(IFS=,; echo "${group_versions[*]}")" \
	--output-dir "$client_dir/clientset" \
	--output-pkg "$client_pkg/clientset"
lister-gen \
	--go-header-file "$header" \
	--output-dir "$client_dir/listers" \
	--output-pkg "$client_pkg/listers" \
	"${api_pkgs[@]}"
informer-gen \
	--go-header-file "$header" \
	--versioned-clientset-package "$client_pkg/clientset/versioned" \
	--listers-package "$client_pkg/listers" \
	--output-dir "$client_dir/informers" \
	--output-pkg "$client_pkg/informers" \
	"${api_pkgs[@]}"
