// Package netnstest runs a test in a network namespace of its own, so that
// nothing a VM under test sends can leave the machine: loopback up, a veth
// pair with both ends inside, an address and a default route on one end
// (passt copies them for its guest), and no way out.
package netnstest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Env is set in the re-executed test process.
const Env = "SOLSTICE_TEST_IN_NETNS"

// Inside reports whether this process runs in the test namespace.
func Inside() bool { return os.Getenv(Env) != "" }

// Reexec re-runs the test named name (a top-level test) with `unshare -n`
// and reports its result on t. It returns true in the outer process, which
// should then return; false in the inner one, which runs the test body.
func Reexec(t *testing.T, name string) bool {
	t.Helper()
	if Inside() {
		return false
	}
	setup := strings.Join([]string{
		"set -e",
		"ip link set lo up",
		"ip link add sv0 type veth peer name sv1",
		"ip addr add 192.0.2.1/24 dev sv0",
		"ip link set sv0 up",
		"ip link set sv1 up",
		"ip route add default via 192.0.2.2 dev sv0",
		`exec "$@"`,
	}, "\n")
	args := []string{"-n", "--", "sh", "-c", setup, "sh", os.Args[0],
		"-test.run", "^" + name + "$", "-test.v", "-test.count=1", "-test.timeout=25m"}
	cmd := exec.CommandContext(t.Context(), "unshare", args...)
	cmd.Env = append(os.Environ(), Env+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	t.Logf("inside the namespace:\n%s", out.String())
	if err != nil {
		t.Fatalf("%s in its network namespace: %v", name, err)
	}
	if !strings.Contains(out.String(), "--- PASS: "+name) {
		t.Fatalf("%s did not pass in its network namespace", name)
	}
	return true
}
