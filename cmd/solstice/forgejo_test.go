package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/agentbin"
	"github.com/solstice-ci/solstice/internal/forgejo/fakeforgejo"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/testenv"
)

// The Forgejo end-to-end tests: the fake Forgejo server → `solstice serve
// -forgejo-runner` (or `solstice forgejo run` beside `solstice
// orchestrator`) → the queue → the orchestrator → a real linux-test VM
// under TCG → back to the fake server. The VMs get no network at all
// (-network none: QEMU user networking with restrict=on), so the jobs have
// no checkout step; the checkout itself is covered by TestExecEndToEnd.

const fjPayload = `name: ci
on: push
jobs:
  build:
    name: build (illumos-ish)
    runs-on: linux-test
    strategy:
      fail-fast: "false"
      matrix:
        flavour: [illumos-ish]
    outputs:
      kernel: ${{ steps.k.outputs.kernel }}
    steps:
      - name: Where am I
        id: k
        run: |
          echo "kernel=$(uname -s)" >> "$GITHUB_OUTPUT"
          echo "flavour ${{ matrix.flavour }} on $(uname -s), token ${{ secrets.FORGEJO_TOKEN }}"
      - name: Allowed to fail
        continue-on-error: true
        run: echo about to fail; exit 7
      - name: Skipped
        if: failure()
        run: echo must not run
      - name: Needs
        run: echo "upstream said ${{ needs.prep.outputs.word }}"
`

func fjRegister(t *testing.T, url string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), ".runner")
	var out, errOut strings.Builder
	code := run(t.Context(), &cliEnv{stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }},
		[]string{"forgejo", "register", "-instance", url, "-token", fakeforgejo.DefaultRegistrationToken,
			"-name", "e2e", "-labels", "linux-test", "-runner", file})
	if code != 0 {
		t.Fatalf("forgejo register exited %d: %s%s", code, out.String(), errOut.String())
	}
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v", st, err)
	}
	return file
}

func fjWait(t *testing.T, srv *fakeforgejo.Server, id int64, timeout time.Duration, what string, cond func(fakeforgejo.TaskView) bool) fakeforgejo.TaskView {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	v, err := srv.WaitTask(ctx, id, cond)
	if err != nil {
		t.Fatalf("task %d: %s: %v\nlog so far:\n%s", id, what, err, v.Log())
	}
	return v
}

func fjDone(v fakeforgejo.TaskView) bool {
	return v.Archived && v.ReportedResult != runnerv1.Result_RESULT_UNSPECIFIED
}

// stepLog returns the rows of step i.
func stepLog(v fakeforgejo.TaskView, i int) string {
	s := v.Steps[i]
	var b strings.Builder
	for _, r := range v.Rows[s.LogIndex : s.LogIndex+s.LogLength] {
		b.WriteString(r.Content + "\n")
	}
	return b.String()
}

// TestForgejoEndToEnd runs `solstice serve -forgejo-runner` on the embedded
// queue and store with two tasks at once: one runs to the end (matrix,
// outputs, needs, continue-on-error, a skipped step, masking), the other is
// cancelled on the server while its step runs.
func TestForgejoEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	if _, err := agentbin.Get("linux", "amd64"); err != nil {
		t.Fatalf("%v (make test builds and embeds the agents first)", err)
	}
	ensureLinuxTest(t)
	srv := fakeforgejo.New(fakeforgejo.Options{})
	url := srv.Start(t)
	runner := fjRegister(t, url)
	runtimeDir, err := os.MkdirTemp("", "sfj")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runtimeDir)

	ctx, cancel := context.WithCancel(context.Background())
	var out testenv.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, &cliEnv{stdout: &out, stderr: &out, getenv: func(string) string { return "" }},
			[]string{"serve", "-data-dir", t.TempDir(), "-forgejo-runner", runner, "-forgejo-fetch-interval", "200ms",
				"-labels", "linux-test", "-max-jobs", "2", "-network", "none", "-accel", "tcg", "-runtime-dir", runtimeDir, "-listen", ""})
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Error("serve did not stop")
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("solstice serve output:\n%s", out.String())
		}
	}()

	added := time.Now()
	ok := srv.AddJob(fakeforgejo.JobSpec{Payload: fjPayload, RunsOn: []string{"linux-test"},
		Needs: map[string]*runnerv1.TaskNeed{"prep": {Result: runnerv1.Result_RESULT_SUCCESS, Outputs: map[string]string{"word": "ready"}}}})
	long := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{"linux-test"},
		Payload: "on: push\njobs:\n  long:\n    runs-on: linux-test\n    steps:\n      - run: echo long-started; sleep 900; echo not-reached\n      - run: echo never\n"})

	first := fjWait(t, srv, ok, 6*time.Minute, "first row", func(v fakeforgejo.TaskView) bool { return len(v.Rows) > 0 })
	t.Logf("task available → first log row at the server: %v", first.Rows[0].Received.Sub(added).Round(time.Millisecond))

	fjWait(t, srv, long, 6*time.Minute, "the long step to start", func(v fakeforgejo.TaskView) bool { return strings.Contains(v.Log(), "long-started") })
	cancelled := time.Now()
	srv.Cancel(long)
	lv := fjWait(t, srv, long, 2*time.Minute, "the cancelled task to be reported", fjDone)
	t.Logf("server cancel → task reported and VM stopping: %v", time.Since(cancelled).Round(time.Millisecond))
	if lv.ReportedResult != runnerv1.Result_RESULT_CANCELLED || strings.Contains(lv.Log(), "not-reached") || strings.Contains(lv.Log(), "never") {
		t.Fatalf("cancelled task: reported %v; log:\n%s", lv.ReportedResult, lv.Log())
	}

	v := fjWait(t, srv, ok, 6*time.Minute, "the task to end", fjDone)
	t.Logf("log of the finished task:\n%s", v.Log())
	if v.Status != runnerv1.Result_RESULT_SUCCESS || v.ResultBeforeArchive || v.StepIDErrors != 0 {
		t.Fatalf("status %v, result before archive %v, bad step ids %d", v.Status, v.ResultBeforeArchive, v.StepIDErrors)
	}
	// A failing step with continue-on-error concludes as success, as act
	// (the Forgejo runner) reports it; its log says it failed.
	want := []runnerv1.Result{runnerv1.Result_RESULT_SUCCESS, runnerv1.Result_RESULT_SUCCESS, runnerv1.Result_RESULT_SKIPPED, runnerv1.Result_RESULT_SUCCESS}
	for i, s := range v.Steps {
		if s.Result != want[i] {
			t.Errorf("step %d (%s): %v, want %v", i, s.Name, s.Result, want[i])
		}
	}
	if l := stepLog(v, 0); !strings.Contains(l, "flavour illumos-ish on Linux, token ***") {
		t.Errorf("step 0 log:\n%s", l)
	}
	if l := stepLog(v, 1); !strings.Contains(l, "about to fail") || !strings.Contains(l, "continue-on-error") {
		t.Errorf("step 1 log:\n%s", l)
	}
	if l := stepLog(v, 3); !strings.Contains(l, "upstream said ready") {
		t.Errorf("step 3 log:\n%s", l)
	}
	if strings.Contains(v.Log(), v.Token) || strings.Contains(v.Log(), "must not run") {
		t.Errorf("token in the log, or the skipped step ran:\n%s", v.Log())
	}
	if v.Steps[0].LogIndex == 0 || !strings.Contains(v.Rows[0].Content, "accepted") {
		t.Errorf("the VM boot is not in Set up job: step 0 at row %d", v.Steps[0].LogIndex)
	}
	if v.Outputs["kernel"] != "Linux" {
		t.Errorf("outputs %v", v.Outputs)
	}
	for deadline := time.Now().Add(30 * time.Second); len(qemuOf(runtimeDir)) > 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU still runs: %v", qemuOf(runtimeDir))
		}
	}
}

// TestForgejoKill9 runs `solstice orchestrator` and `solstice forgejo run`
// as separate processes on RabbitMQ and PostgreSQL, kills the daemon with
// SIGKILL while the job prints in its VM, starts it again, and checks that
// the server's log has every line exactly once, in order.
func TestForgejoKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if _, err := agentbin.Get("linux", "amd64"); err != nil {
		t.Fatalf("%v (make test builds and embeds the agents first)", err)
	}
	ensureLinuxTest(t)
	amqpURL, dbURL := testenv.AMQPURL(), testenv.DatabaseURL()
	srv := fakeforgejo.New(fakeforgejo.Options{})
	url := srv.Start(t)
	runner := fjRegister(t, url)
	runtimeDir, err := os.MkdirTemp("", "sfk")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runtimeDir)
	id := uuid.NewString()[:8]
	common := []string{"-amqp-url", amqpURL, "-amqp-prefix", "solstice-fjk-" + id, "-database-url", dbURL,
		"-sealing-key", fmt.Sprintf("%x", jobspec.NewKey())}

	var orchOut, daemonOut testenv.Buffer
	spawn := func(out *testenv.Buffer, args ...string) *exec.Cmd {
		c := exec.Command(os.Args[0], "-test.run=^$")
		c.Env = append(os.Environ(), "SOLSTICE_CLI_CHILD=1", "SOLSTICE_CLI_ARGS="+strings.Join(args, "\n"))
		c.Stdout, c.Stderr = out, out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	orch := spawn(&orchOut, append([]string{"orchestrator", "-labels", "linux-test", "-host", "fjk-" + id, "-network", "none",
		"-accel", "tcg", "-runtime-dir", runtimeDir, "-listen", ""}, common...)...)
	daemonArgs := append([]string{"forgejo", "run", "-runner", runner, "-forgejo-fetch-interval", "200ms"}, common...)
	daemon := spawn(&daemonOut, daemonArgs...)
	defer func() {
		for _, c := range []*exec.Cmd{daemon, orch} {
			if c != nil && c.ProcessState == nil {
				_ = c.Process.Signal(syscall.SIGTERM)
				_ = c.Wait()
			}
		}
		for _, pid := range qemuOf(runtimeDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("orchestrator:\n%s\ndaemon:\n%s", orchOut.String(), daemonOut.String())
		}
	}()

	const n = 150
	task := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{"linux-test"},
		Payload: fmt.Sprintf("on: push\njobs:\n  count:\n    runs-on: linux-test\n    steps:\n      - run: echo first\n      - run: for i in $(seq %d); do echo line $i; sleep 0.05; done\n      - run: echo last\n", n)})
	fjWait(t, srv, task, 6*time.Minute, "line 30", func(v fakeforgejo.TaskView) bool { return strings.Contains(v.Log(), "line 30\n") })
	_ = daemon.Process.Signal(syscall.SIGKILL)
	_ = daemon.Wait()
	time.Sleep(2 * time.Second) // the job prints on while no daemon reports
	daemon = spawn(&daemonOut, daemonArgs...)
	v := fjWait(t, srv, task, 3*time.Minute, "the task to end", fjDone)
	if v.Status != runnerv1.Result_RESULT_SUCCESS || v.ResultBeforeArchive || v.StepIDErrors != 0 {
		t.Fatalf("status %v; log:\n%s", v.Status, v.Log())
	}
	var want strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	if got := stepLog(v, 1); got != want.String() {
		t.Fatalf("step 1's log is not every line exactly once, in order, across the restart:\n%s", got)
	}
	if !strings.Contains(stepLog(v, 0), "first") || !strings.Contains(stepLog(v, 2), "last") {
		t.Fatalf("log:\n%s", v.Log())
	}
	if !strings.Contains(daemonOut.String(), "resuming task") {
		t.Fatal("the restarted daemon did not resume the task")
	}
}

func TestForgejoRegisterCommand(t *testing.T) {
	srv := fakeforgejo.New(fakeforgejo.Options{})
	url := srv.Start(t)
	dir := t.TempDir()
	secret := strings.Repeat("ab12", 10)
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"token", []string{"-instance", url, "-token", fakeforgejo.DefaultRegistrationToken, "-labels", "linux-test,omnios-r151056:host"}, 0, "linux-test:host,omnios-r151056:host"},
		{"bad token", []string{"-instance", url, "-token", "wrong", "-labels", "linux-test"}, 1, "invalid"},
		{"label without image", []string{"-instance", url, "-token", fakeforgejo.DefaultRegistrationToken, "-labels", "ubuntu-latest"}, 1, "ubuntu-latest"},
		{"docker label", []string{"-instance", url, "-token", fakeforgejo.DefaultRegistrationToken, "-labels", "linux-test:docker://debian"}, 1, "docker"},
		{"offline secret", []string{"-instance", url, "-secret", secret, "-labels", "linux-test"}, 0, "uuid 61623132-6162-3132-6162-313261623132"},
		{"short secret", []string{"-instance", url, "-secret", "abc"}, 1, "secret"},
		{"token and secret", []string{"-instance", url, "-secret", secret, "-token", "x"}, 1, "exactly one"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out strings.Builder
			file := filepath.Join(dir, fmt.Sprintf("runner-%d", i))
			code := run(t.Context(), &cliEnv{stdout: &out, stderr: &out, getenv: func(string) string { return "" }},
				append([]string{"forgejo", "register", "-name", "r", "-runner", file}, c.args...))
			if code != c.code || !strings.Contains(strings.ToLower(out.String()), strings.ToLower(c.want)) {
				t.Fatalf("exit %d (want %d), output:\n%s\nwant it to contain %q", code, c.code, out.String(), c.want)
			}
			if _, err := os.Stat(file); (err == nil) != (c.code == 0) {
				t.Fatalf("credentials file exists: %v, exit %d", err == nil, code)
			}
		})
	}
	if rs := srv.Runners(); len(rs) != 1 || strings.Join(rs[0].Labels, ",") != "linux-test,omnios-r151056" {
		t.Fatalf("the server got %+v, want one runner with the label names only", rs)
	}
}
