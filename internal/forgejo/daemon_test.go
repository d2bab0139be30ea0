package forgejo_test

// These tests run the whole path but the VM: the fake Forgejo server →
// the daemon → the queue → the orchestrator → the local-process stand-in
// for the VM (package localproc: it runs the real agent on this host) →
// events → the daemon → the fake server. They import the orchestrator only
// to have one to talk to; the daemon itself depends on jobspec and the
// queue, never on the orchestrator. The real-VM variant is
// TestForgejoEndToEnd in cmd/solstice.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/forgejo"
	"github.com/solstice-ci/solstice/internal/forgejo/fakeforgejo"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/orchestrator"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/queue/amqpq"
	"github.com/solstice-ci/solstice/internal/queue/memq"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/store/postgres"
	"github.com/solstice-ci/solstice/internal/store/sqlite"
	"github.com/solstice-ci/solstice/internal/testenv"
	"github.com/solstice-ci/solstice/internal/vm/image"
	"github.com/solstice-ci/solstice/internal/vm/localproc"
)

const label = "local-test"

func TestMain(m *testing.M) {
	if os.Getenv("SOLSTICE_FORGEJO_CHILD") == "1" {
		os.Exit(daemonChild())
	}
	os.Exit(m.Run())
}

// pair is a queue and a store, with what it takes to open the same ones in
// a child process.
type pair struct {
	name   string
	q      queue.Queue
	st     store.Store
	prefix string // amqpq prefix ("" for the embedded pair)
}

func openPair(t testing.TB, name string) pair {
	t.Helper()
	switch name {
	case "embedded":
		st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "jobs.db"))
		if err != nil {
			t.Fatal(err)
		}
		q := memq.New()
		t.Cleanup(func() { q.Close(); st.Close() })
		return pair{name: name, q: q, st: st}
	default:
		q, st, prefix := testenv.Services(t, "fj")
		return pair{name: name, q: q, st: st, prefix: prefix}
	}
}

type localImages struct{}

func (localImages) Resolve(_ context.Context, l string, _ io.Writer) (image.Entry, image.Local, error) {
	return image.Entry{Label: l, OS: runtime.GOOS, Arch: runtime.GOARCH}, image.Local{Disk: "/dev/null"}, nil
}

// startOrchestrator runs an orchestrator for label on p with the
// local-process stand-in; it returns the stand-in's machine folder.
func startOrchestrator(t testing.TB, p pair, sealer *jobspec.Sealer) string {
	t.Helper()
	bin, err := os.ReadFile(testenv.AgentBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	o, err := orchestrator.New(orchestrator.Config{Host: "fj-host-" + uuid.NewString()[:6], Labels: []string{label}, MaxJobs: 2},
		orchestrator.Deps{Queue: p.q, Store: p.st, Sealer: sealer,
			Backend: &localproc.Backend{Dir: dir}, Images: localImages{},
			Agent: func(string, string) ([]byte, error) { return bin, nil },
			Log:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(10 * time.Second); !o.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("orchestrator not ready")
		}
	}
	return dir
}

// register registers a runner with the fake server.
func register(t testing.TB, url string, labels ...string) forgejo.Credentials {
	t.Helper()
	var full []string
	for _, l := range labels {
		full = append(full, l+":host")
	}
	c, err := forgejo.Register(t.Context(), forgejo.RegisterOptions{Instance: url, Token: fakeforgejo.DefaultRegistrationToken,
		Name: "test-runner", Labels: full, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func startDaemon(t testing.TB, p pair, sealer *jobspec.Sealer, creds forgejo.Credentials, labels ...string) {
	t.Helper()
	d, err := forgejo.New(forgejo.Config{Credentials: creds, Labels: labels, Capacity: 2,
		FetchInterval: 100 * time.Millisecond, ReportInterval: 200 * time.Millisecond, Version: "test",
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))},
		forgejo.Deps{Queue: p.q, Store: p.st, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
}

func waitDone(t *testing.T, s *fakeforgejo.Server, id int64, timeout time.Duration) fakeforgejo.TaskView {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	v, err := s.WaitTask(ctx, id, func(v fakeforgejo.TaskView) bool {
		return v.Archived && v.ReportedResult != runnerv1.Result_RESULT_UNSPECIFIED
	})
	if err != nil {
		t.Fatalf("task %d not reported in %v: %v\nlog:\n%s", id, timeout, err, v.Log())
	}
	return v
}

// checkSteps asserts the step states are in order, contiguous and
// non-overlapping, and returns each step's log.
func checkSteps(t *testing.T, v fakeforgejo.TaskView) []string {
	t.Helper()
	if v.StepIDErrors != 0 {
		t.Errorf("%d step states with a bad id", v.StepIDErrors)
	}
	if v.ResultBeforeArchive {
		t.Error("the final result reached the server before the log was archived")
	}
	var logs []string
	end := int64(0)
	for i, s := range v.Steps {
		if s.LogLength == 0 {
			logs = append(logs, "")
			continue
		}
		if s.LogIndex < end {
			t.Errorf("step %d starts at row %d, inside the step before (ends at %d)", i, s.LogIndex, end)
		}
		if s.LogIndex+s.LogLength > int64(len(v.Rows)) {
			t.Fatalf("step %d: rows %d+%d beyond the log (%d rows)", i, s.LogIndex, s.LogLength, len(v.Rows))
		}
		end = s.LogIndex + s.LogLength
		var b strings.Builder
		for _, r := range v.Rows[s.LogIndex:end] {
			b.WriteString(r.Content + "\n")
		}
		logs = append(logs, b.String())
	}
	return logs
}

const okPayload = `name: ci
on: push
jobs:
  build:
    name: build (blue)
    runs-on: local-test
    strategy:
      fail-fast: "false"
      matrix:
        color: [blue]
    outputs:
      answer: ${{ steps.o.outputs.x }}
    steps:
      - name: greet
        run: echo "hello ${{ matrix.color }} from ${{ github.repository }}"; echo "the secret is ${{ secrets.PASSWORD }}"
      - name: never
        if: false
        run: echo must not run
      - id: o
        run: echo "x=42" >> "$GITHUB_OUTPUT"; echo "needs said ${{ needs.prep.outputs.v }}"
`

func TestDaemonRunsTask(t *testing.T) {
	for _, name := range []string{"embedded", "rabbitmq-postgres"} {
		t.Run(name, func(t *testing.T) {
			p := openPair(t, name)
			sealer, _ := jobspec.NewSealer(jobspec.NewKey())
			srv := fakeforgejo.New(fakeforgejo.Options{})
			url := srv.Start(t)
			startOrchestrator(t, p, sealer)
			creds := register(t, url, label, "nobody-serves")
			startDaemon(t, p, sealer, creds, label, "nobody-serves")

			ok := srv.AddJob(fakeforgejo.JobSpec{Payload: okPayload, RunsOn: []string{label},
				Context: map[string]any{"repository": "alice/proj"},
				Secrets: map[string]string{"PASSWORD": "hunter2-secret"},
				Needs:   map[string]*runnerv1.TaskNeed{"prep": {Result: runnerv1.Result_RESULT_SUCCESS, Outputs: map[string]string{"v": "seven"}}}})
			unsupported := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label},
				Payload: "on: push\njobs:\n  j:\n    runs-on: local-test\n    steps:\n      - uses: actions/setup-go@v5\n"})
			noRoute := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{"nobody-serves"},
				Payload: "on: push\njobs:\n  j:\n    runs-on: nobody-serves\n    steps:\n      - run: echo hi\n"})

			v := waitDone(t, srv, ok, 2*time.Minute)
			logs := checkSteps(t, v)
			if v.Status != runnerv1.Result_RESULT_SUCCESS {
				t.Fatalf("result %v, log:\n%s", v.Status, v.Log())
			}
			if len(logs) != 3 || !strings.Contains(logs[0], "hello blue from alice/proj") || !strings.Contains(logs[0], "the secret is ***") ||
				!strings.Contains(logs[2], "needs said seven") {
				t.Fatalf("step logs %q\nwhole log:\n%s", logs, v.Log())
			}
			if strings.Contains(v.Log(), "hunter2-secret") || strings.Contains(v.Log(), v.Token) {
				t.Fatalf("a secret reached the log:\n%s", v.Log())
			}
			want := []runnerv1.Result{runnerv1.Result_RESULT_SUCCESS, runnerv1.Result_RESULT_SKIPPED, runnerv1.Result_RESULT_SUCCESS}
			for i, s := range v.Steps {
				if s.Result != want[i] {
					t.Errorf("step %d result %v, want %v", i, s.Result, want[i])
				}
			}
			if v.Outputs["answer"] != "42" {
				t.Errorf("outputs %v", v.Outputs)
			}
			if v.Steps[0].LogIndex == 0 || !strings.Contains(v.Rows[0].Content, "accepted") {
				t.Errorf("no Set up job rows before the first step: first step at row %d, row 0 %q", v.Steps[0].LogIndex, v.Rows[0].Content)
			}

			for id, want := range map[int64]string{unsupported: "actions/setup-go", noRoute: "no orchestrator serves"} {
				v := waitDone(t, srv, id, 30*time.Second)
				if v.Status != runnerv1.Result_RESULT_FAILURE || !strings.Contains(v.Log(), want) {
					t.Errorf("task %d: %v, want failure naming %q; log:\n%s", id, v.Status, want, v.Log())
				}
			}
			// The state goes once the final UpdateTask was answered.
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				left, err := p.st.ListReports(t.Context(), "forgejo/"+creds.UUID+"/")
				if err == nil && len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("reporting state left in the store: %v %v", slices.Collect(maps.Keys(left)), err)
				}
			}
		})
	}
}

func TestDaemonCancel(t *testing.T) {
	for _, name := range []string{"embedded", "rabbitmq-postgres"} {
		t.Run(name, func(t *testing.T) {
			p := openPair(t, name)
			sealer, _ := jobspec.NewSealer(jobspec.NewKey())
			srv := fakeforgejo.New(fakeforgejo.Options{})
			url := srv.Start(t)
			machines := startOrchestrator(t, p, sealer)
			creds := register(t, url, label)
			startDaemon(t, p, sealer, creds, label)
			id := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label},
				Payload: "on: push\njobs:\n  j:\n    runs-on: local-test\n    steps:\n      - run: echo started; sleep 120; echo not reached\n      - run: echo never\n"})
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			if _, err := srv.WaitTask(ctx, id, func(v fakeforgejo.TaskView) bool { return strings.Contains(v.Log(), "started") }); err != nil {
				t.Fatalf("the step did not start: %v", err)
			}
			start := time.Now()
			srv.Cancel(id)
			v := waitDone(t, srv, id, time.Minute)
			t.Logf("cancel reported in %v", time.Since(start).Round(time.Millisecond))
			t.Logf("log:\n%s", v.Log())
			checkSteps(t, v)
			if v.Status != runnerv1.Result_RESULT_CANCELLED || v.ReportedResult != runnerv1.Result_RESULT_CANCELLED {
				t.Errorf("status %v, reported %v; log:\n%s", v.Status, v.ReportedResult, v.Log())
			}
			if strings.Contains(v.Log(), "not reached") || strings.Contains(v.Log(), "never") {
				t.Errorf("the job went on after the cancel:\n%s", v.Log())
			}
			// The orchestrator publishes job_finished before its store
			// write: wait for the write.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				jobs, _ := p.st.ListJobs(t.Context(), store.Filter{Label: label})
				var states []store.State
				for _, j := range jobs {
					if strings.Contains(string(j.Request), creds.UUID) { // not another test's job
						states = append(states, j.State)
					}
				}
				if len(states) == 1 && states[0] == store.Cancelled {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("job states %v, want one job, cancelled", states)
				}
			}
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				left, _ := os.ReadDir(machines)
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("machine left after the cancel: %v", left)
				}
			}
		})
	}
}

// daemonChild runs a daemon configured by the environment (the kill -9
// test's child process) until SIGTERM or SIGKILL.
func daemonChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, d := testenv.AMQPURL(), testenv.DatabaseURL()
	q, err := amqpq.Open(ctx, a, amqpq.Options{Prefix: os.Getenv("FJ_PREFIX")})
	if err != nil {
		log.Error("queue", "err", err)
		return 1
	}
	defer q.Close()
	st, err := postgres.Open(ctx, d)
	if err != nil {
		log.Error("store", "err", err)
		return 1
	}
	defer st.Close()
	key, _ := jobspec.ParseKey(os.Getenv("FJ_KEY"))
	sealer, _ := jobspec.NewSealer(key)
	creds, err := forgejo.LoadCredentials(os.Getenv("FJ_RUNNER"))
	if err != nil {
		log.Error("credentials", "err", err)
		return 1
	}
	dm, err := forgejo.New(forgejo.Config{Credentials: creds, Labels: []string{label}, FetchInterval: 100 * time.Millisecond,
		ReportInterval: 200 * time.Millisecond, Log: log}, forgejo.Deps{Queue: q, Store: st, Sealer: sealer})
	if err != nil {
		log.Error("daemon", "err", err)
		return 1
	}
	if err := dm.Run(ctx); err != nil {
		log.Error("daemon ended", "err", err)
		return 1
	}
	return 0
}

// TestDaemonKill9 kills the daemon (a child process) with SIGKILL while its
// job prints, starts it again, and checks that the server's log holds
// every line exactly once, in order, and the task ends normally.
func TestDaemonKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("needs RabbitMQ and PostgreSQL")
	}
	p := openPair(t, "rabbitmq-postgres")
	key := jobspec.NewKey()
	sealer, _ := jobspec.NewSealer(key)
	srv := fakeforgejo.New(fakeforgejo.Options{})
	url := srv.Start(t)
	startOrchestrator(t, p, sealer)
	creds := register(t, url, label)
	runnerFile := filepath.Join(t.TempDir(), ".runner")
	if err := forgejo.SaveCredentials(runnerFile, creds); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	var child *exec.Cmd
	start := func() {
		child = exec.Command(os.Args[0], "-test.run=^$")
		child.Env = append(os.Environ(), "SOLSTICE_FORGEJO_CHILD=1", "FJ_PREFIX="+p.prefix,
			"FJ_KEY="+fmt.Sprintf("%x", key), "FJ_RUNNER="+runnerFile)
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
		if t.Failed() || testing.Verbose() {
			t.Logf("daemon output:\n%s", out.String())
		}
	}()
	const n = 120
	id := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label},
		Payload: fmt.Sprintf("on: push\njobs:\n  j:\n    runs-on: local-test\n    steps:\n      - run: echo first\n      - run: for i in $(seq %d); do echo line $i; sleep 0.05; done\n      - run: echo last\n", n)})
	start()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := srv.WaitTask(ctx, id, func(v fakeforgejo.TaskView) bool { return strings.Contains(v.Log(), "line 20\n") }); err != nil {
		t.Fatalf("the job did not print: %v", err)
	}
	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()
	child = nil
	time.Sleep(time.Second) // the job prints on while no daemon reports
	start()
	v := waitDone(t, srv, id, 2*time.Minute)
	_ = child.Process.Signal(syscall.SIGTERM)
	_ = child.Wait()
	child = nil
	logs := checkSteps(t, v)
	if v.Status != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("result %v; log:\n%s", v.Status, v.Log())
	}
	if logs[1] != numberedLines(n) {
		t.Fatalf("step 2's log after the restart is not every line once, in order:\n%s", logs[1])
	}
	if !strings.Contains(logs[0], "first") || !strings.Contains(logs[2], "last") {
		t.Fatalf("step logs: %q", logs)
	}
}

// TestDaemonServerErrors makes the server fail FetchTask, UpdateLog and
// UpdateTask calls while a job prints, as a restarting or overloaded
// Forgejo would, and checks that the log still arrives whole, once, in
// order, and the task ends normally.
func TestDaemonServerErrors(t *testing.T) {
	p := openPair(t, "embedded")
	sealer, _ := jobspec.NewSealer(jobspec.NewKey())
	srv := fakeforgejo.New(fakeforgejo.Options{})
	url := srv.Start(t)
	startOrchestrator(t, p, sealer)
	creds := register(t, url, label)
	unavailable := connect.NewError(connect.CodeUnavailable, errors.New("server restarting"))
	srv.InjectError("FetchTask", unavailable, 2)
	startDaemon(t, p, sealer, creds, label)
	const n = 60
	id := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label},
		Payload: fmt.Sprintf("on: push\njobs:\n  j:\n    runs-on: local-test\n    steps:\n      - run: for i in $(seq %d); do echo line $i; sleep 0.05; done\n", n)})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := srv.WaitTask(ctx, id, func(v fakeforgejo.TaskView) bool { return strings.Contains(v.Log(), "line 10\n") }); err != nil {
		t.Fatal(err)
	}
	srv.InjectError("UpdateLog", unavailable, 4)
	srv.InjectError("UpdateTask", unavailable, 3)
	v := waitDone(t, srv, id, time.Minute)
	logs := checkSteps(t, v)
	if v.Status != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("result %v; log:\n%s", v.Status, v.Log())
	}
	if logs[0] != numberedLines(n) {
		t.Fatalf("step log after server errors:\n%s", logs[0])
	}
}

// TestDaemonCancelWaiting cancels a task whose job waits in the queue
// behind busy slots: it is reported cancelled at once, and when a slot
// frees up, no orchestrator runs it.
func TestDaemonCancelWaiting(t *testing.T) {
	for _, name := range []string{"embedded", "rabbitmq-postgres"} {
		t.Run(name, func(t *testing.T) {
			p := openPair(t, name)
			sealer, _ := jobspec.NewSealer(jobspec.NewKey())
			srv := fakeforgejo.New(fakeforgejo.Options{})
			url := srv.Start(t)
			startOrchestrator(t, p, sealer) // 2 slots
			creds := register(t, url, label)
			startDaemon(t, p, sealer, creds, label) // capacity 2
			marker := filepath.Join(t.TempDir(), "ran")
			long := "on: push\njobs:\n  j:\n    runs-on: local-test\n    steps:\n      - run: echo started; sleep 60\n"
			a := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label}, Payload: long})
			b := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label}, Payload: long})
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			for _, id := range []int64{a, b} {
				if _, err := srv.WaitTask(ctx, id, func(v fakeforgejo.TaskView) bool { return strings.Contains(v.Log(), "started") }); err != nil {
					t.Fatal(err)
				}
			}
			// A second daemon for the same runner would share the route; a
			// second runner's daemon takes the waiting task instead.
			creds2 := register(t, url, label)
			startDaemon(t, p, sealer, creds2, label)
			c := srv.AddJob(fakeforgejo.JobSpec{RunsOn: []string{label},
				Payload: "on: push\njobs:\n  j:\n    runs-on: local-test\n    steps:\n      - run: touch " + marker + "\n"})
			if _, err := srv.WaitTask(ctx, c, func(v fakeforgejo.TaskView) bool { return v.Picked }); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond) // published, waiting for a slot
			t0 := time.Now()
			srv.Cancel(c)
			v := waitDone(t, srv, c, 30*time.Second)
			t.Logf("waiting task reported in %v", time.Since(t0))
			if v.ReportedResult != runnerv1.Result_RESULT_CANCELLED || !strings.Contains(v.Log(), "before it started") {
				t.Fatalf("waiting task: reported %v; log:\n%s", v.ReportedResult, v.Log())
			}
			srv.Cancel(a)
			srv.Cancel(b)
			waitDone(t, srv, a, 30*time.Second)
			waitDone(t, srv, b, 30*time.Second)
			t.Logf("running tasks reported in %v", time.Since(t0))
			time.Sleep(2 * time.Second) // slots are free: the waiting job would run now
			if _, err := os.Stat(marker); err == nil {
				t.Fatal("the cancelled waiting job ran")
			}
		})
	}
}

// TestDaemonDeclare: a server that cannot be reached at first is retried;
// an old server without Declare is fine; a server that does not know the
// runner stops the daemon with an error that says so.
func TestDaemonDeclare(t *testing.T) {
	p := openPair(t, "embedded")
	sealer, _ := jobspec.NewSealer(jobspec.NewKey())
	run := func(creds forgejo.Credentials) error {
		d, err := forgejo.New(forgejo.Config{Credentials: creds, Labels: []string{label}, FetchInterval: 50 * time.Millisecond},
			forgejo.Deps{Queue: p.q, Store: p.st, Sealer: sealer})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		return d.Run(ctx)
	}
	srv := fakeforgejo.New(fakeforgejo.Options{})
	url := srv.Start(t)
	creds := register(t, url, label)
	srv.InjectError("Declare", connect.NewError(connect.CodeUnavailable, errors.New("starting up")), 3)
	if err := run(creds); err != nil {
		t.Fatalf("daemon with a server that came up late: %v", err)
	}
	if rs := srv.Runners(); len(rs) != 1 || !rs[0].Declared {
		t.Fatalf("runner not declared: %+v", rs)
	}

	old := fakeforgejo.New(fakeforgejo.Options{NoDeclare: true})
	oldURL := old.Start(t)
	if err := run(register(t, oldURL, label)); err != nil {
		t.Fatalf("daemon with a server without Declare: %v", err)
	}

	creds.Token = "not-the-token"
	if err := run(creds); err == nil || !strings.Contains(err.Error(), "register again") {
		t.Fatalf("daemon of an unknown runner: %v", err)
	}
}

// numberedLines is what `for i in $(seq n); do echo line $i; done` prints.
func numberedLines(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.String()
}
