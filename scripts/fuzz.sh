#!/usr/bin/env bash
# Runs every fuzz target of the module for a while (default 30s each), then
# keeps up to 30 of the inputs each target found interesting in the
# package's testdata/fuzz/<Target>/, so plain `go test` replays them.
set -euo pipefail
fuzztime=${1:-30s}
keep=${KEEP:-30}
cd "$(dirname "$0")/.."
module=$(go list -m)
cache=$(go env GOCACHE)/fuzz
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
	dir=$(dirname "${file#./}")
	pkg=./$dir
	grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //' | while read -r target; do
		echo "== $pkg $target ($fuzztime)"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 5s "$pkg"
		found="$cache/$module/$dir/$target"
		if [ -d "$found" ]; then
			mkdir -p "$dir/testdata/fuzz/$target"
			ls -S "$found" | tail -n "$keep" | while read -r f; do cp -n "$found/$f" "$dir/testdata/fuzz/$target/"; done
		fi
	done
done
