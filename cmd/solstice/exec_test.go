package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/agentbin"
	"github.com/solstice-ci/solstice/internal/netnstest"
)

// TestExecEndToEnd runs `solstice exec` on the example workflow: a matrix
// of two legs and a job that needs them, each in a fresh linux-test VM
// under TCG, in a network namespace of its own. It checks the live log,
// the step results, the outputs passed between steps and jobs, and the exit
// code; then that a failing job makes exec exit 1 and skips its dependants.
func TestExecEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	if _, err := agentbin.Get("linux", "amd64"); err != nil {
		t.Fatalf("%v (make test builds and embeds the agents first)", err)
	}
	if !netnstest.Inside() {
		ensureLinuxTest(t)
	}
	if netnstest.Reexec(t, "TestExecEndToEnd") {
		return
	}
	repo := t.TempDir()
	if out, err := exec.Command("cp", "-a", "../../examples/hello/.", repo).CombinedOutput(); err != nil {
		t.Fatalf("copying the example: %v %s", err, out)
	}
	// A second workflow whose first job fails: its dependant is skipped.
	failing := "on: push\njobs:\n  broken:\n    runs-on: linux-test\n    steps:\n      - run: echo about to fail; exit 5\n  after:\n    needs: broken\n    runs-on: linux-test\n    steps:\n      - run: echo must not run\n"
	if err := os.WriteFile(filepath.Join(repo, ".github", "workflows", "failing.yml"), []byte(failing), 0o644); err != nil {
		t.Fatal(err)
	}
	gitIn(t, repo, "init", "-q")
	gitIn(t, repo, "add", "-A")
	gitIn(t, repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "example")
	runtimeDir, err := os.MkdirTemp("", "sx")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runtimeDir)

	exe := func(workflow string) (int, string) {
		var out, errOut bytes.Buffer
		env := &cliEnv{stdout: &out, stderr: &errOut, getenv: os.Getenv}
		code := run(context.Background(), env, []string{"exec", "-w", filepath.Join(repo, ".github", "workflows", workflow),
			"--accel", "tcg", "--max-jobs", "2", "--runtime-dir", runtimeDir})
		return code, out.String() + errOut.String()
	}

	code, log := exe("ci.yml")
	t.Logf("solstice exec ci.yml (exit %d):\n%s", code, log)
	if code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	for _, want := range []string{
		"[build (plain)]   hello, plain",
		"[build (loud)]   HELLO, LOUD",
		"the greet step said 'hello, plain'",
		"this step fails, and the job goes on",
		"continue-on-error: the job goes on",
		"[report]   build said '", // needs.build.outputs passed on
		"with hello",              // workflow env
		"build                    success",
		"report                   success",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if !strings.Contains(log, "▶ Greet (plain)") || !strings.Contains(log, "✓ Greet (plain) (success in ") {
		t.Errorf("log lacks step headers with results and durations")
	}

	code, log = exe("failing.yml")
	t.Logf("solstice exec failing.yml (exit %d):\n%s", code, log)
	if code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(log, "about to fail") || strings.Contains(log, "must not run") {
		t.Errorf("failing workflow log is wrong")
	}
	if !strings.Contains(log, "broken") || !strings.Contains(log, "failure") || !strings.Contains(log, "skipped") {
		t.Errorf("summary does not show the failure and the skipped dependant")
	}
	// Nothing is left: no VM folder in the runtime directory.
	if left, _ := filepath.Glob(filepath.Join(runtimeDir, "vm-*")); len(left) != 0 {
		t.Errorf("VM folders left: %v", left)
	}
}

func gitIn(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}
