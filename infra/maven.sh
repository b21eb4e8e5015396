# Sourced by infra/*/…sh: resolve what a pom.xml pins from Maven Central, once.
#
#   maven_resolve NAME POM DIR GOAL [ARGS...]
#
# Runs `mvn GOAL -DoutputDirectory=DIR ARGS` unless DIR already holds a complete
# result. DIR should include a hash of the pom, so a version change resolves anew.
maven_resolve() {
  local name=$1 pom=$2 dir=$3 goal=$4
  shift 4
  [ -f "$dir/.complete" ] && return 0
  echo "$name: resolving from Maven Central into $dir (once)"
  rm -rf "$dir"
  mkdir -p "$dir"
  mvn -B -Dstyle.color=never -f "$pom" "$goal" -DoutputDirectory="$dir" "$@" \
    >"$dir/.mvn.log" 2>&1 || { tail -n 40 "$dir/.mvn.log" >&2; return 1; }
  touch "$dir/.complete"
}

# A short content hash of a file, for cache directory names.
file_key() { sha256sum "$1" | cut -c1-12; }
