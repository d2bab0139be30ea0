package orchestrator_test

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/orchestrator"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/queue/memq"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/store/sqlite"
	"github.com/solstice-ci/solstice/internal/testenv"
	"github.com/solstice-ci/solstice/internal/vm/localproc"
)

// These tests run the orchestrator's whole job path on the in-process queue
// and SQLite, with the local-process backend standing in for QEMU (named as
// such: it runs the real agent binary on this host instead of in a VM).
// The real-VM variant is the end-to-end test of solstice exec.

// agentBinary returns solstice-runner built for this host.
func agentBinary(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(testenv.AgentBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type harness struct {
	q      queue.Queue
	st     store.Store
	sealer *jobspec.Sealer
	orch   *orchestrator.Orchestrator
	cancel context.CancelFunc
	done   chan error
	route  string
}

func newHarness(t *testing.T, maxJobs int) *harness {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := jobspec.NewSealer(jobspec.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	return newHarnessOn(t, orchestrator.Config{Host: "test-host", Labels: []string{"local-test"}, MaxJobs: maxJobs},
		st, sealer, t.TempDir())
}

// newHarnessOn runs an orchestrator with cfg on st (which it closes at the
// end) and the local-process stand-in in machines.
func newHarnessOn(t *testing.T, cfg orchestrator.Config, st store.Store, sealer *jobspec.Sealer, machines string) *harness {
	t.Helper()
	q := memq.New()
	bin := agentBinary(t)
	o, err := orchestrator.New(cfg,
		orchestrator.Deps{
			Queue: q, Store: st, Sealer: sealer,
			Backend: &localproc.Backend{Dir: machines},
			Images:  imagesAdapter{},
			Agent:   func(string, string) ([]byte, error) { return bin, nil },
			Log:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{q: q, st: st, sealer: sealer, orch: o, cancel: cancel, done: make(chan error, 1), route: "test-route"}
	go func() { h.done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(30 * time.Second):
			t.Error("orchestrator did not stop")
		}
		q.Close()
		st.Close()
	})
	// Wait until the orchestrator declared its labels.
	deadline := time.Now().Add(10 * time.Second)
	for !o.Ready() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return h
}

// gitRepo makes a repository with one commit whose job.sh is script.
func gitRepo(t *testing.T, script string) (url, sha string) {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@localhost", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@localhost")
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, b)
		}
		return strings.TrimSpace(string(b))
	}
	run("init", "-q")
	if err := os.MkdirAll(filepath.Join(dir, ".solstice"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".solstice", "job.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	run("add", "-A")
	run("commit", "-q", "-m", "job")
	return "file://" + dir, run("rev-parse", "HEAD")
}

func (h *harness) publish(t *testing.T, url, sha string, steps []agentapi.Step, secrets map[string]string) string {
	t.Helper()
	id := uuid.NewString()
	sealed, err := h.sealer.Seal(id, jobspec.Secrets{Secrets: secrets})
	if err != nil {
		t.Fatal(err)
	}
	req := jobspec.JobRequest{Version: jobspec.Version, JobID: id,
		Source:  jobspec.Source{Platform: jobspec.PlatformLocal, Instance: h.route, TaskID: "1"},
		Project: "test/repo", RepoURL: url, CommitSHA: sha, RunsOn: "local-test", Steps: steps, Secrets: sealed}
	if err := req.Validate(); err != nil {
		t.Fatal(err)
	}
	body, err := jobspec.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.q.PublishJob(t.Context(), "local-test", body); err != nil {
		t.Fatal(err)
	}
	return id
}

// events collects the events of the route until every job in ids finished.
func (h *harness) events(t *testing.T, ids ...string) map[string][]jobspec.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ch, err := h.q.ConsumeEvents(ctx, h.route)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]jobspec.Event{}
	open := map[string]bool{}
	for _, id := range ids {
		open[id] = true
	}
	for len(open) > 0 {
		select {
		case d, ok := <-ch:
			if !ok {
				t.Fatalf("event channel closed with jobs %v open", open)
			}
			ev, err := jobspec.DecodeEvent(d.Body())
			if err != nil {
				t.Fatal(err)
			}
			_ = d.Ack()
			out[ev.JobID] = append(out[ev.JobID], *ev)
			if ev.Kind == jobspec.EventJobFinished {
				delete(open, ev.JobID)
			}
		case <-ctx.Done():
			t.Fatalf("jobs %v did not finish: %v", open, ctx.Err())
		}
	}
	return out
}

func logText(evs []jobspec.Event) string {
	var b strings.Builder
	for _, e := range evs {
		for _, l := range e.Lines {
			b.WriteString(l.Text + "\n")
		}
	}
	return b.String()
}

func last(evs []jobspec.Event) jobspec.Event { return evs[len(evs)-1] }

func TestJobPath(t *testing.T) {
	h := newHarness(t, 2)
	url, sha := gitRepo(t, "#!/bin/sh\necho from-job-sh\n")
	okID := h.publish(t, url, sha, []agentapi.Step{
		{Name: "greet", Run: "echo hello $WHO; echo the secret is $TOKEN", Env: map[string]string{"WHO": "world", "TOKEN": "${{ secrets.TOKEN }}"}},
		{Name: "out", ID: "o", Run: `echo "x=42" >> "$GITHUB_OUTPUT"`},
	}, map[string]string{"TOKEN": "hunter2-secret"})
	failID := h.publish(t, url, sha, []agentapi.Step{{Name: "boom", Run: "echo before; exit 3"}, {Name: "never", Run: "echo never"}}, nil)
	shID := h.publish(t, url, sha, nil, nil)
	evs := h.events(t, okID, failID, shID)

	ok := evs[okID]
	if f := last(ok); f.Result != jobspec.ResultSuccess {
		t.Fatalf("ok job: %+v\nlog:\n%s", f, logText(ok))
	}
	log := logText(ok)
	if !strings.Contains(log, "hello world") || !strings.Contains(log, "the secret is ***") || strings.Contains(log, "hunter2-secret") {
		t.Fatalf("ok job log (masking?):\n%s", log)
	}
	var kinds []string
	var lastSeq int64
	for _, e := range ok {
		if e.Seq <= lastSeq {
			t.Fatalf("event seq not increasing: %d after %d", e.Seq, lastSeq)
		}
		lastSeq = e.Seq
		if e.Kind != jobspec.EventLog {
			kinds = append(kinds, e.Kind)
		}
	}
	if got := strings.Join(kinds, ","); !strings.HasPrefix(got, "accepted,vm_booting,step_started,step_finished,step_started,step_finished") || !strings.HasSuffix(got, "job_finished") {
		t.Fatalf("event kinds: %s", got)
	}

	fail := evs[failID]
	if f := last(fail); f.Result != jobspec.ResultFailure || f.ExitCode != 3 {
		t.Fatalf("failing job: %+v", f)
	}
	if strings.Contains(logText(fail), "never") {
		t.Fatalf("a step after the failure ran:\n%s", logText(fail))
	}
	if f := last(evs[shID]); f.Result != jobspec.ResultSuccess || !strings.Contains(logText(evs[shID]), "from-job-sh") {
		t.Fatalf("job.sh job: %+v\n%s", f, logText(evs[shID]))
	}
	for id, want := range map[string]store.State{okID: store.Succeeded, failID: store.Failed, shID: store.Succeeded} {
		h.waitState(t, id, want)
	}
}

func TestCancelRunningJob(t *testing.T) {
	h := newHarness(t, 1)
	url, sha := gitRepo(t, "#!/bin/sh\n")
	id := h.publish(t, url, sha, []agentapi.Step{{Name: "sleep", Run: "echo started; sleep 300"}}, nil)
	go func() {
		for {
			j, err := h.st.GetJob(context.Background(), id)
			if err == nil && j.State == store.Running {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second)
		body, _ := jobspec.Marshal(jobspec.Cancel{Version: jobspec.Version, JobID: id, Reason: "user asked"})
		_ = h.q.PublishCancel(context.Background(), body)
	}()
	start := time.Now()
	evs := h.events(t, id)
	if f := last(evs[id]); f.Result != jobspec.ResultCancelled || !strings.Contains(f.Message, "user asked") {
		t.Fatalf("cancelled job ended %+v", f)
	}
	if time.Since(start) > 2*time.Minute {
		t.Fatal("cancel did not stop the sleep")
	}
	h.waitState(t, id, store.Cancelled)
}

// waitState waits for the job's final state: job_finished is published
// just before the store records it.
func (h *harness) waitState(t *testing.T, id string, want store.State) {
	t.Helper()
	var j store.Job
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if j, err = h.st.GetJob(t.Context(), id); err == nil && j.State == want {
			return
		}
	}
	t.Errorf("job %s in store: %v %v, want %s", id, j.State, err, want)
}
