#!/usr/bin/env bash
# Regenerates tools/reference-facts.json and tools/reference-relations.json from a xen-api
# source tree: compiles the reference datamodel with OCaml against the stand-ins in stubs/,
# runs dump.ml on it and hands the result to assemble.mjs. See README.md beside this file.
#
#   tools/reference-facts/extract.sh [options] XEN_API_CHECKOUT
#   tools/reference-facts/extract.sh [options] --git GIT_DIR [--commit REV]
#
# options:
#   --commit REV       the commit the tree is at (read from git when the checkout is a git work
#                      tree; with --git, the revision to extract, default HEAD)
#   --datamodel PATH   the published export xenapi.json (default ../shared/xenapi/xenapi.json)
#   --out DIR          where the two facts files go (default tools/)
#   --keep DIR         build in DIR and keep it (default: a temporary directory, removed)
#
# Needs: ocamlopt, ocamldep and the compiler-libs of OCaml 4.13 (Debian: apt-get install -y
# ocaml-nox), git (for --git), and node.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
datamodel="$root/../shared/xenapi/xenapi.json"
out="$root/tools"
commit=""
git_dir=""
checkout=""
keep=""

while [ $# -gt 0 ]; do
  case "$1" in
    --git) git_dir=$2; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --datamodel) datamodel=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "extract.sh: unknown option $1" >&2; exit 2 ;;
    *) checkout=$1; shift ;;
  esac
done

for tool in ocamlopt ocamldep node; do
  command -v "$tool" >/dev/null || { echo "extract.sh: $tool not found (apt-get install -y ocaml-nox; node)" >&2; exit 1; }
done
ocaml_version=$(ocamlopt -version)
case "$ocaml_version" in
  4.13.*) ;;
  *) echo "extract.sh: warning: built and checked with OCaml 4.13, this is $ocaml_version" >&2 ;;
esac

if [ -n "$keep" ]; then
  build=$keep
  mkdir -p "$build"
else
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
fi

# The reference sources the extraction compiles, relative to the xen-api root.
idl_modules="ocaml/idl"
consts="ocaml/xapi-consts"
backend="ocaml/idl/ocaml_backend"

if [ -n "$git_dir" ]; then
  [ -z "$checkout" ] || { echo "extract.sh: give a checkout or --git, not both" >&2; exit 2; }
  commit=$(git --git-dir="$git_dir" rev-parse "${commit:-HEAD}^{commit}")
  checkout="$build/xen-api"
  mkdir -p "$checkout"
  git --git-dir="$git_dir" archive "$commit" "$idl_modules" "$consts" | tar -x -C "$checkout"
elif [ -n "$checkout" ]; then
  if [ -z "$commit" ]; then
    commit=$(git -C "$checkout" rev-parse HEAD 2>/dev/null) || {
      echo "extract.sh: $checkout is not a git work tree; name its commit with --commit" >&2
      exit 2
    }
  fi
else
  sed -n '2,18p' "$0" >&2
  exit 2
fi

src="$build/src"
rm -rf "$src"
mkdir -p "$src"

copy() { # copy a module and its interface, if it has one
  local ml="$checkout/$1"
  [ -f "$ml" ] || { echo "extract.sh: missing $1 in $checkout" >&2; exit 1; }
  cp "$ml" "$src/"
  [ ! -f "${ml%.ml}.mli" ] || cp "${ml%.ml}.mli" "$src/"
}
for f in "$checkout/$idl_modules"/datamodel*.ml; do
  case "$(basename "$f")" in
    datamodel_main.ml|datamodel_schema.ml) ;; # the doc generator's driver; the DB schema (needs xapi-schema)
    *) copy "$idl_modules/$(basename "$f")" ;;
  esac
done
for m in dm_api escaping api_version; do copy "$idl_modules/$m.ml"; done
for m in api_errors api_messages constants sizes; do copy "$consts/$m.ml"; done
for m in ocaml_syntax ocaml_utils gen_common gen_client gen_empty_custom; do copy "$backend/$m.ml"; done
cp "$here"/stubs/*.ml "$src/"
cp "$here/dump.ml" "$src/"

echo "extract.sh: compiling the reference datamodel at $commit" >&2
mkdir -p "$build/ppx"
cp "$here/ppx/deriving_rpc_lite.ml" "$build/ppx/"
ocamlopt -I +compiler-libs ocamlcommon.cmxa "$build/ppx/deriving_rpc_lite.ml" -o "$build/ppx.exe"
cd "$src"
order=$(ocamldep -sort -ppx "$build/ppx.exe" ./*.mli ./*.ml)
objects=()
for f in $order; do
  # The reference code is compiled as it is, warnings off; dump.ml itself with warnings on.
  if [ "$f" = ./dump.ml ]; then flags=(-w +a-4-9-40-41-42-44-45-70 -warn-error +a); else flags=(-w -a); fi
  ocamlopt -ppx "$build/ppx.exe" "${flags[@]}" -c "$f"
  case "$f" in *.ml) objects+=("${f%.ml}.cmx") ;; esac
done
ocamlopt -o "$build/dump.exe" "${objects[@]}"
"$build/dump.exe" > "$build/datamodel-dump.json"

node "$here/assemble.mjs" --dump "$build/datamodel-dump.json" --commit "$commit" --datamodel "$datamodel" --out "$out"
