package orchestrator_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/orchestrator"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/queue/amqpq"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/store/postgres"
	"github.com/solstice-ci/solstice/internal/testenv"
	"github.com/solstice-ci/solstice/internal/vm/localproc"
)

// The crash tests run the orchestrator as a child process (this test binary
// started again with SOLSTICE_CRASH_CHILD=1) on the machine's RabbitMQ and
// PostgreSQL, so it can be killed with SIGKILL in the middle of jobs. The
// "VMs" are the local-process stand-in (package localproc), which leaves
// real process groups behind when its orchestrator dies, as QEMU would; the
// real-VM variant is TestCrashRealVM in cmd/solstice.

func TestMain(m *testing.M) {
	if os.Getenv("SOLSTICE_CRASH_CHILD") == "1" {
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

// crashChild runs an orchestrator configured by the environment until
// SIGTERM (or until it is killed).
func crashChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	amqpURL, dbURL := testenv.AMQPURL(), testenv.DatabaseURL()
	q, err := amqpq.Open(ctx, amqpURL, amqpq.Options{Prefix: os.Getenv("CRASH_PREFIX"), Log: log})
	if err != nil {
		log.Error("opening queue", "err", err)
		return 1
	}
	defer q.Close()
	st, err := postgres.Open(ctx, dbURL)
	if err != nil {
		log.Error("opening store", "err", err)
		return 1
	}
	defer st.Close()
	key, err := jobspec.ParseKey(os.Getenv("CRASH_KEY"))
	if err != nil {
		log.Error("key", "err", err)
		return 1
	}
	sealer, err := jobspec.NewSealer(key)
	if err != nil {
		log.Error("sealer", "err", err)
		return 1
	}
	bin, err := os.ReadFile(os.Getenv("CRASH_AGENT"))
	if err != nil {
		log.Error("agent", "err", err)
		return 1
	}
	maxJobs, _ := strconv.Atoi(os.Getenv("CRASH_MAX_JOBS"))
	o, err := orchestrator.New(orchestrator.Config{
		Host: os.Getenv("CRASH_HOST"), Labels: []string{os.Getenv("CRASH_LABEL")}, MaxJobs: maxJobs,
		LeaseTTL: 20 * time.Second, RescueInterval: 2 * time.Second, DrainTimeout: 30 * time.Second,
	}, orchestrator.Deps{
		Queue: q, Store: st, Sealer: sealer, Log: log,
		Backend: &localproc.Backend{Dir: os.Getenv("CRASH_DIR")},
		Images:  imagesAdapter{},
		Agent:   func(string, string) ([]byte, error) { return bin, nil },
	})
	if err != nil {
		log.Error("orchestrator", "err", err)
		return 1
	}
	if err := o.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("orchestrator ended", "err", err)
		return 1
	}
	return 0
}

// crashRig is one orchestrator child process and the queue, store and event
// collector of the test that drives it.
type crashRig struct {
	t      *testing.T
	env    []string
	q      queue.Queue
	st     store.Store
	sealer *jobspec.Sealer
	label  string
	route  string
	dir    string // localproc machines
	pidDir string // each job step writes its shell's pid here

	mu     sync.Mutex
	events map[string]map[int64]jobspec.Event // job id → seq → event
	child  *exec.Cmd
	out    *testenv.Buffer
}

func newCrashRig(t *testing.T, maxJobs int) *crashRig {
	t.Helper()
	q, st, prefix := testenv.Services(t, "crash")
	id := prefix[len(prefix)-8:]
	key := jobspec.NewKey()
	sealer, err := jobspec.NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	agentPath := testenv.AgentBinary(t)
	r := &crashRig{
		t: t, q: q, st: st, sealer: sealer,
		label: "crash-" + id, route: "crash-route-" + id,
		dir: t.TempDir(), pidDir: t.TempDir(),
		events: map[string]map[int64]jobspec.Event{},
		out:    &testenv.Buffer{},
	}
	r.env = append(os.Environ(), "SOLSTICE_CRASH_CHILD=1",
		"CRASH_PREFIX="+prefix, "CRASH_KEY="+fmt.Sprintf("%x", key), "CRASH_AGENT="+agentPath,
		"CRASH_MAX_JOBS="+strconv.Itoa(maxJobs), "CRASH_HOST=crash-host-"+id, "CRASH_LABEL="+r.label,
		"CRASH_DIR="+r.dir)
	// The label's queue must exist before jobs are published, as when an
	// orchestrator has served it before.
	if err := q.DeclareLabels(t.Context(), []string{r.label}); err != nil {
		t.Fatal(err)
	}
	evCh, err := q.ConsumeEvents(t.Context(), r.route)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for d := range evCh {
			ev, err := jobspec.DecodeEvent(d.Body())
			if err == nil {
				r.mu.Lock()
				if r.events[ev.JobID] == nil {
					r.events[ev.JobID] = map[int64]jobspec.Event{}
				}
				r.events[ev.JobID][ev.Seq] = *ev
				r.mu.Unlock()
			}
			_ = d.Ack()
		}
	}()
	t.Cleanup(func() {
		r.stopChild()
		if t.Failed() || testing.Verbose() {
			t.Logf("orchestrator output:\n%s", r.out.String())
		}
	})
	return r
}

func (r *crashRig) startChild() {
	r.t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = r.env
	c.Stdout, c.Stderr = r.out, r.out
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		r.t.Fatal(err)
	}
	fmt.Fprintf(r.out, "=== child %d started\n", c.Process.Pid)
	r.child = c
}

// kill9 kills the orchestrator process alone (not the jobs it started,
// which a real crash leaves behind too).
func (r *crashRig) kill9() {
	r.t.Helper()
	if err := r.child.Process.Signal(syscall.SIGKILL); err != nil {
		r.t.Fatal(err)
	}
	_ = r.child.Wait()
	fmt.Fprintf(r.out, "=== child %d killed with SIGKILL\n", r.child.Process.Pid)
	r.child = nil
}

func (r *crashRig) stopChild() {
	if r.child == nil {
		return
	}
	_ = r.child.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = r.child.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = r.child.Process.Kill()
		<-done
		r.t.Error("orchestrator child did not stop on SIGTERM")
	}
	r.child = nil
}

// publish publishes a job whose step records its shell's pid, sleeps and
// prints a line.
func (r *crashRig) publish(sleep time.Duration) string {
	r.t.Helper()
	id := uuid.NewString()
	sealed, err := r.sealer.Seal(id, jobspec.Secrets{})
	if err != nil {
		r.t.Fatal(err)
	}
	req := jobspec.JobRequest{Version: jobspec.Version, JobID: id,
		Source:  jobspec.Source{Platform: jobspec.PlatformLocal, Instance: r.route, TaskID: id},
		Project: "test/crash", RepoURL: "file:///nonexistent", CommitSHA: strings.Repeat("0", 40), RunsOn: r.label,
		Checkout: agentapi.Checkout{Skip: true},
		Steps: []agentapi.Step{{Name: "work", Run: fmt.Sprintf("echo $$ > %s/%s.pid; echo started; sleep %g; echo finished",
			r.pidDir, id, sleep.Seconds())}},
		Secrets: sealed}
	if err := req.Validate(); err != nil {
		r.t.Fatal(err)
	}
	body, err := jobspec.Marshal(req)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.q.PublishJob(r.t.Context(), r.label, body); err != nil {
		r.t.Fatal(err)
	}
	return id
}

// count returns how many of ids have an event of kind.
func (r *crashRig) count(ids []string, kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, id := range ids {
		for _, ev := range r.events[id] {
			if ev.Kind == kind {
				n++
				break
			}
		}
	}
	return n
}

func (r *crashRig) waitFor(what string, timeout time.Duration, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// finished returns each job's job_finished events (distinct by seq).
func (r *crashRig) finished(id string) []jobspec.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []jobspec.Event
	for _, ev := range r.events[id] {
		if ev.Kind == jobspec.EventJobFinished {
			out = append(out, ev)
		}
	}
	return out
}

// checkEnded asserts that every job ended exactly once, that the store
// agrees with the event, and that nothing of any job still runs.
func (r *crashRig) checkEnded(ids []string) map[string]string {
	r.t.Helper()
	results := map[string]string{}
	for _, id := range ids {
		fin := r.finished(id)
		if len(fin) != 1 {
			r.t.Errorf("job %s: %d job_finished events, want exactly 1: %+v", id, len(fin), fin)
			continue
		}
		j, err := r.st.GetJob(r.t.Context(), id)
		if err != nil {
			r.t.Errorf("job %s: %v", id, err)
			continue
		}
		if !j.State.Terminal() || j.Result != fin[0].Result {
			r.t.Errorf("job %s: store says %s/%s, event says %s", id, j.State, j.Result, fin[0].Result)
		}
		if j.State == store.Errored && !strings.Contains(j.Message, "restarted") {
			r.t.Errorf("job %s errored without a clear reason: %q", id, j.Message)
		}
		results[id] = fin[0].Result
	}
	// No machine folder and no job process is left.
	left, _ := os.ReadDir(r.dir)
	for _, e := range left {
		r.t.Errorf("machine folder left behind: %s", e.Name())
	}
	pids, _ := filepath.Glob(filepath.Join(r.pidDir, "*.pid"))
	for _, p := range pids {
		b, _ := os.ReadFile(p)
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == nil && !zombie(pid) {
			r.t.Errorf("job process %d (%s) still runs", pid, filepath.Base(p))
		}
	}
	return results
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] == "Z"
}

// TestCrashKill9 kills the orchestrator with SIGKILL while jobs run and
// others wait, restarts it, and checks that every job ends exactly once:
// the interrupted ones errored with "orchestrator restarted", the rest
// succeeded, no machine and no job process left behind.
func TestCrashKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("needs RabbitMQ and PostgreSQL")
	}
	r := newCrashRig(t, 3)
	var ids []string
	for range 10 {
		ids = append(ids, r.publish(4*time.Second))
	}
	r.startChild()
	r.waitFor("3 jobs running", 60*time.Second, func() bool { return r.count(ids, jobspec.EventStepStarted) >= 3 })
	r.kill9()
	r.startChild()
	r.waitFor("every job finished", 3*time.Minute, func() bool { return r.count(ids, jobspec.EventJobFinished) == len(ids) })
	r.stopChild()
	time.Sleep(500 * time.Millisecond) // let late duplicates arrive, if any
	results := r.checkEnded(ids)
	n := map[string]int{}
	for _, res := range results {
		n[res]++
	}
	t.Logf("results: %v", n)
	if n[jobspec.ResultErrored] < 3 || n[jobspec.ResultSuccess] < 1 || n[jobspec.ResultErrored]+n[jobspec.ResultSuccess] != len(ids) {
		t.Errorf("want the ≥3 interrupted jobs errored and the others succeeded: %v", n)
	}
}

// TestCrashServicesRestart restarts RabbitMQ and then PostgreSQL while jobs
// run and checks that no job is lost: every job still ends exactly once,
// successfully. It stops the machine's shared services for a few seconds,
// so it runs only when SOLSTICE_TEST_RESTART_SERVICES=1 (make test runs it
// alone, after every other test).
func TestCrashServicesRestart(t *testing.T) {
	if os.Getenv("SOLSTICE_TEST_RESTART_SERVICES") != "1" {
		t.Skip("set SOLSTICE_TEST_RESTART_SERVICES=1 to let this test restart RabbitMQ and PostgreSQL")
	}
	r := newCrashRig(t, 2)
	var ids []string
	for range 8 {
		ids = append(ids, r.publish(3*time.Second))
	}
	r.startChild()
	r.waitFor("2 jobs running", 60*time.Second, func() bool { return r.count(ids, jobspec.EventStepStarted) >= 2 })
	restart(t, "RabbitMQ", "sh", "-c", "rabbitmqctl -q stop_app && sleep 2 && rabbitmqctl -q start_app")
	r.waitFor("4 jobs started", 2*time.Minute, func() bool { return r.count(ids, jobspec.EventStepStarted) >= 4 })
	restart(t, "PostgreSQL", "sh", "-c", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main restart")
	r.waitFor("every job finished", 4*time.Minute, func() bool { return r.count(ids, jobspec.EventJobFinished) == len(ids) })
	r.stopChild()
	time.Sleep(500 * time.Millisecond)
	for id, res := range r.checkEnded(ids) {
		if res != jobspec.ResultSuccess {
			t.Errorf("job %s ended %s; a service restart must not lose or fail jobs", id, res)
		}
	}
}

func restart(t *testing.T, what string, args ...string) {
	t.Helper()
	start := time.Now()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("restarting %s: %v\n%s", what, err, out)
	}
	t.Logf("%s restarted in %v", what, time.Since(start).Round(time.Millisecond))
}
