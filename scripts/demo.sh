#!/usr/bin/env bash
# The main job of the quick start: runs the example repository's job.
#
# With a built linux-test image (`bin/solstice image build linux-test`) and
# `solstice exec` available, the example workflow runs in a fresh VM per job;
# otherwise the guest agent runs the example's .solstice/workflow.kdl on this
# machine, in a scratch workspace, exactly as it would inside a guest.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The example as a git repository of its own (the agent fetches by commit).
cp -a examples/hello "$scratch/repo"
git -C "$scratch/repo" init -q
git -C "$scratch/repo" add -A
git -C "$scratch/repo" -c user.name=demo -c user.email=demo@localhost commit -q -m "example"
sha=$(git -C "$scratch/repo" rev-parse HEAD)

if "$root/bin/solstice" help 2>&1 | grep -q '^  exec ' && [ "${DEMO_LOCAL:-}" != 1 ]; then
	echo "== solstice exec: examples/hello/.github/workflows/ci.yml, one linux-test VM per job"
	cd "$scratch/repo"
	# The example needs no network: its VMs get none (SLIRP restrict=on).
	exec "$root/bin/solstice" exec --network none -w .github/workflows/ci.yml
fi

echo "== solstice-runner on examples/hello at $sha (workspace $scratch/work)"
arch=$(go env GOARCH)
SOLSTICE_REPO_URL="file://$scratch/repo" SOLSTICE_COMMIT_SHA="$sha" SOLSTICE_WORKDIR="$scratch/work" \
	"$root/bin/agents/solstice-runner-linux-$arch" --events="$scratch/events.jsonl"
echo "== $(wc -l < "$scratch/events.jsonl") JSON events written; the last one:"
tail -n 1 "$scratch/events.jsonl"
