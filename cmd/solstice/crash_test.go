package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/agentbin"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/testenv"
	"github.com/solstice-ci/solstice/internal/vm/image"
)

// TestMain lets a test start this test binary as the solstice command
// itself (SOLSTICE_CLI_CHILD=1, arguments in SOLSTICE_CLI_ARGS, one per
// line), so it can kill it with SIGKILL.
func TestMain(m *testing.M) {
	if os.Getenv("SOLSTICE_CLI_CHILD") == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, &cliEnv{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv},
			strings.Split(os.Getenv("SOLSTICE_CLI_ARGS"), "\n"))
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// ensureLinuxTest builds or finds the linux-test image in the cache outside
// the clone (debootstrap needs the package mirror, so this runs outside
// any network namespace).
func ensureLinuxTest(t *testing.T) {
	t.Helper()
	cat, err := image.DefaultCatalog()
	if err != nil {
		t.Fatal(err)
	}
	e, _ := cat.Lookup("linux-test")
	c := &image.Cache{Dir: image.DefaultCacheDir()}
	var log bytes.Buffer
	if _, err := c.Ensure(t.Context(), e, &log); err != nil {
		t.Fatalf("building linux-test: %v\n%s", err, log.String())
	}
}

// qemuOf returns the pids of processes whose command line mentions dir.
func qemuOf(dir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir)) || !bytes.Contains(b, []byte("qemu-system")) {
			continue
		}
		var pid int
		fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid)
		pids = append(pids, pid)
	}
	return pids
}

// TestCrashRealVM kills `solstice orchestrator` with SIGKILL while a job
// runs in a real linux-test VM (TCG, user networking with restrict=on: the
// guest has no egress), leaving QEMU behind as a real crash would, then
// starts it again: the job must end exactly once as errored with a clear
// reason, and the restarted orchestrator must have reaped the VM.
func TestCrashRealVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if _, err := agentbin.Get("linux", "amd64"); err != nil {
		t.Fatalf("%v (make test builds and embeds the agents first)", err)
	}
	ensureLinuxTest(t)
	amqpURL, dbURL := testenv.AMQPURL(), testenv.DatabaseURL()
	q, st, prefix := testenv.Services(t, "crashvm")
	id := prefix[len(prefix)-8:]
	key := jobspec.NewKey()
	sealer, err := jobspec.NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	runtimeDir, err := os.MkdirTemp("", "scr")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runtimeDir)

	var out testenv.Buffer
	args := strings.Join([]string{"orchestrator", "-amqp-url", amqpURL, "-amqp-prefix", prefix, "-database-url", dbURL,
		"-sealing-key", fmt.Sprintf("%x", key), "-labels", "linux-test", "-host", "crash-vm-" + id,
		"-accel", "tcg", "-runtime-dir", runtimeDir, "-listen", ""}, "\n")
	var child *exec.Cmd
	start := func() {
		child = exec.Command(os.Args[0], "-test.run=^$")
		child.Env = append(os.Environ(), "SOLSTICE_CLI_CHILD=1", "SOLSTICE_CLI_ARGS="+args)
		child.Stdout, child.Stderr = &out, &out
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
	}
	defer func() {
		if child != nil {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
		for _, pid := range qemuOf(runtimeDir) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("orchestrator output:\n%s", out.String())
		}
	}()

	route := "crashvm-" + id
	events, err := q.ConsumeEvents(t.Context(), route)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.DeclareLabels(t.Context(), []string{"linux-test"}); err != nil {
		t.Fatal(err)
	}
	jobID := uuid.NewString()
	sealed, err := sealer.Seal(jobID, jobspec.Secrets{})
	if err != nil {
		t.Fatal(err)
	}
	req := jobspec.JobRequest{Version: jobspec.Version, JobID: jobID,
		Source:  jobspec.Source{Platform: jobspec.PlatformLocal, Instance: route, TaskID: "crash"},
		Project: "test/crash", RepoURL: "file:///nonexistent", CommitSHA: strings.Repeat("0", 40), RunsOn: "linux-test",
		Network: jobspec.NetworkNone, Checkout: agentapi.Checkout{Skip: true},
		Steps: []agentapi.Step{{Name: "long", Run: "echo in-the-vm; sleep 600"}}, Secrets: sealed}
	body, err := jobspec.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.PublishJob(t.Context(), "linux-test", body); err != nil {
		t.Fatal(err)
	}
	start()

	finished := map[int64]jobspec.Event{}
	var sawLine bool
	wait := func(what string, timeout time.Duration, done func() bool) {
		t.Helper()
		deadline := time.After(timeout)
		for !done() {
			select {
			case d := <-events:
				ev, err := jobspec.DecodeEvent(d.Body())
				_ = d.Ack()
				if err != nil || ev.JobID != jobID {
					continue
				}
				for _, l := range ev.Lines {
					sawLine = sawLine || strings.Contains(l.Text, "in-the-vm")
				}
				if ev.Kind == jobspec.EventJobFinished {
					finished[ev.Seq] = *ev
				}
			case <-time.After(100 * time.Millisecond):
			case <-deadline:
				t.Fatalf("timed out after %v waiting for %s", timeout, what)
			}
		}
	}
	wait("the step's first line from the VM", 5*time.Minute, func() bool { return sawLine })
	if len(qemuOf(runtimeDir)) != 1 {
		t.Fatalf("want one QEMU process, found %v", qemuOf(runtimeDir))
	}
	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()
	child = nil
	if len(qemuOf(runtimeDir)) != 1 {
		t.Fatal("QEMU did not outlive its orchestrator; the test would not show reaping")
	}
	start()
	wait("job_finished after the restart", 2*time.Minute, func() bool { return len(finished) > 0 })
	// Late duplicates, if any, would arrive now.
	until := time.Now().Add(3 * time.Second)
	wait("late duplicates", 10*time.Second, func() bool { return time.Now().After(until) })
	if len(finished) != 1 {
		t.Fatalf("want exactly one job_finished, got %+v", finished)
	}
	for _, ev := range finished {
		if ev.Result != jobspec.ResultErrored || !strings.Contains(ev.Message, "restarted") {
			t.Fatalf("job ended %s %q, want errored because the orchestrator restarted", ev.Result, ev.Message)
		}
	}
	j, err := st.GetJob(t.Context(), jobID)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != "errored" {
		t.Fatalf("store state %s, want errored", j.State)
	}
	for deadline := time.Now().Add(30 * time.Second); len(qemuOf(runtimeDir)) > 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU %v still runs after the restart", qemuOf(runtimeDir))
		}
	}
	if left, _ := filepath.Glob(filepath.Join(runtimeDir, "vm-*")); len(left) > 0 {
		t.Fatalf("VM folders left: %v", left)
	}
	_ = child.Process.Signal(syscall.SIGTERM)
	if err := child.Wait(); err != nil {
		t.Errorf("orchestrator exit after SIGTERM: %v", err)
	}
	child = nil
}
