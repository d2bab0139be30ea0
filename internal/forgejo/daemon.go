package forgejo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"go.yaml.in/yaml/v3"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/store"
)

// Config holds the settings of one runner daemon.
type Config struct {
	// Credentials of the registered runner (the .runner file).
	Credentials Credentials
	// Labels are the label names the runner declares and serves; default:
	// the names of Credentials.Labels.
	Labels []string
	// Capacity bounds the tasks running at once (default 1).
	Capacity int
	// FetchInterval is the pause between FetchTask calls while idle
	// (default 2s); FetchTimeout bounds one call (default 10s).
	FetchInterval time.Duration
	FetchTimeout  time.Duration
	// ReportInterval is how often logs and step states of a running task
	// are sent (default 500ms; the UpdateTask heartbeat goes at least
	// every 2s regardless: a cancel reaches the runner only in its answer).
	ReportInterval time.Duration
	// DrainTimeout is how long running tasks go on being reported after
	// Run's ctx ended (default 0: stop at once; the next start resumes
	// them).
	DrainTimeout time.Duration
	// CancelGrace is how long a task the server ended waits for the
	// orchestrator to stop the job before it is reported as is (default 2m).
	CancelGrace time.Duration
	// Version is sent in Declare.
	Version string
	// HTTP is the client for the server (default: one with a 60s timeout).
	HTTP *http.Client
	Log  *slog.Logger
}

// Deps are the parts the daemon works with: the queue to the
// orchestrators, the store for the reporting state, and the sealer of job
// secrets (its key is shared with the orchestrators).
type Deps struct {
	Queue  queue.Queue
	Store  store.Store
	Sealer *jobspec.Sealer
	// Client overrides the RunnerService client (tests); default: a
	// connect client for Credentials.Address.
	Client runnerv1connect.RunnerServiceClient
}

// Daemon is a running `solstice forgejo run`.
type Daemon struct {
	cfg  Config
	deps Deps
	rpc  runnerv1connect.RunnerServiceClient
	log  *slog.Logger

	mu    sync.Mutex
	tasks map[string]*task // by job id
	slots chan struct{}
	wg    sync.WaitGroup
	// quit is closed when the drain after Run's ctx ended is over: running
	// tasks stop reporting and are left for the next process.
	quit chan struct{}
}

// task is one task the daemon reports.
type task struct {
	rec taskRecord
	rep *reporter
	// wake is signalled when an event for the task arrives.
	wake chan struct{}
}

// taskRecord is what the daemon keeps in the store for each task it runs,
// so a restarted daemon resumes reporting it: the request is published
// again if no orchestrator ever stored the job.
type taskRecord struct {
	TaskID  int64           `json:"task_id"`
	JobID   string          `json:"job_id"`
	Steps   int             `json:"steps"`
	Label   string          `json:"label"`
	Request json.RawMessage `json:"request,omitempty"`
	// Failure is set when the task cannot run; it is reported as failed
	// (or skipped, when Skipped) without publishing anything.
	Failure string `json:"failure,omitempty"`
	Skipped bool   `json:"skipped,omitempty"`
}

// New checks the configuration and makes a Daemon.
func New(cfg Config, deps Deps) (*Daemon, error) {
	if cfg.Credentials.UUID == "" || cfg.Credentials.Token == "" {
		return nil, errors.New("forgejo daemon: the runner is not registered (no uuid or token)")
	}
	if deps.Queue == nil || deps.Store == nil || deps.Sealer == nil {
		return nil, errors.New("forgejo daemon: queue, store and sealer are required")
	}
	if len(cfg.Labels) == 0 {
		for _, l := range cfg.Credentials.Labels {
			name, _, err := ParseLabel(l)
			if err != nil {
				return nil, fmt.Errorf("forgejo daemon: %w", err)
			}
			cfg.Labels = append(cfg.Labels, name)
		}
	}
	if len(cfg.Labels) == 0 {
		return nil, errors.New("forgejo daemon: no labels")
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 1
	}
	if cfg.FetchInterval <= 0 {
		cfg.FetchInterval = 2 * time.Second
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 10 * time.Second
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = 500 * time.Millisecond
	}
	if cfg.CancelGrace <= 0 {
		cfg.CancelGrace = 2 * time.Minute
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 60 * time.Second}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	rpc := deps.Client
	if rpc == nil {
		creds := cfg.Credentials
		rpc, _ = NewClient(cfg.Credentials.Address, &creds, cfg.HTTP)
	}
	return &Daemon{
		cfg: cfg, deps: deps, rpc: rpc,
		log:   cfg.Log.With("component", "forgejo", "runner", cfg.Credentials.UUID),
		tasks: map[string]*task{},
		slots: make(chan struct{}, cfg.Capacity),
		quit:  make(chan struct{}),
	}, nil
}

// prefix is the store key prefix of this runner's records.
func (d *Daemon) prefix() string { return "forgejo/" + d.cfg.Credentials.UUID + "/" }

func (d *Daemon) recordKey(id int64) string { return d.prefix() + "task/" + strconv.FormatInt(id, 10) }
func (d *Daemon) reportKey(id int64) string {
	return d.prefix() + "report/" + strconv.FormatInt(id, 10)
}

// Run declares the runner, resumes the tasks an earlier process was
// reporting, then fetches and runs tasks until ctx ends. When ctx ends it
// stops fetching, goes on reporting running tasks for DrainTimeout, then
// returns; the state of tasks still running stays in the store, so a
// restarted daemon resumes them.
func (d *Daemon) Run(ctx context.Context) error {
	if err := d.declare(ctx); err != nil {
		return err
	}
	// Events go on being consumed while running tasks finish after ctx
	// ends (a SIGTERM drain); they stop when Run returns.
	evCtx, stopEvents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEvents()
	if err := d.resume(ctx); err != nil {
		return err
	}
	events, err := d.deps.Queue.ConsumeEvents(evCtx, d.cfg.Credentials.UUID)
	if err != nil {
		return fmt.Errorf("consuming the runner's events: %w", err)
	}
	evDone := make(chan struct{})
	go func() { defer close(evDone); d.dispatch(events) }()
	d.log.Info("forgejo runner started", "instance", d.cfg.Credentials.Address, "labels", d.cfg.Labels, "capacity", d.cfg.Capacity)
	d.poll(ctx)
	drained := make(chan struct{})
	go func() { d.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(d.cfg.DrainTimeout):
		close(d.quit)
		<-drained
	}
	stopEvents()
	<-evDone
	return nil
}

// declare sends the runner's version and labels, retrying with backoff
// while the server cannot be reached (it may be restarting). An old server
// without Declare is not an error; a server that does not know the runner
// is.
func (d *Daemon) declare(ctx context.Context) error {
	wait := d.cfg.FetchInterval
	for {
		_, err := d.rpc.Declare(ctx, connect.NewRequest(&runnerv1.DeclareRequest{Version: d.cfg.Version, Labels: d.cfg.Labels}))
		switch {
		case err == nil:
			return nil
		case IsUnimplemented(err):
			d.log.Info("the server has no Declare (older than Forgejo 1.21); labels stay as registered")
			return nil
		case IsUnauthenticated(err):
			return fmt.Errorf("declaring the runner: the server does not know it (deleted? register again): %w", err)
		}
		d.log.Warn("declaring the runner; retrying", "instance", d.cfg.Credentials.Address, "err", err, "in", wait)
		if !sleep(ctx, wait) {
			return fmt.Errorf("declaring the runner to %s: %w", d.cfg.Credentials.Address, err)
		}
		wait = min(wait*2, time.Minute)
	}
}

// resume starts reporting every task an earlier process left in the store.
func (d *Daemon) resume(ctx context.Context) error {
	recs, err := d.deps.Store.ListReports(ctx, d.prefix()+"task/")
	if err != nil {
		return fmt.Errorf("listing the tasks to resume: %w", err)
	}
	for key, b := range recs {
		var rec taskRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			d.log.Error("unreadable task record; dropping it", "key", key, "err", err)
			_ = d.deps.Store.DeleteReport(ctx, key)
			continue
		}
		d.log.Info("resuming task", "task", rec.TaskID, "job_id", rec.JobID)
		slot := false
		select {
		case d.slots <- struct{}{}:
			slot = true
		default:
			// More saved tasks than capacity (capacity was lowered): run
			// them anyway, they are already on the server.
		}
		if err := d.start(ctx, rec, true, slot); err != nil {
			return err
		}
	}
	return nil
}

// poll fetches tasks while there is a free slot, until ctx ends.
func (d *Daemon) poll(ctx context.Context) {
	var version int64
	backoff := d.cfg.FetchInterval
	for {
		select {
		case d.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		t, v, err := d.fetch(ctx, version)
		switch {
		case err != nil && ctx.Err() != nil:
			<-d.slots
			return
		case err != nil:
			<-d.slots
			d.log.Warn("fetching a task", "err", err, "retry_in", backoff)
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, time.Minute)
			continue
		case t == nil:
			<-d.slots
			version = v
			backoff = d.cfg.FetchInterval
			if !sleep(ctx, d.cfg.FetchInterval) {
				return
			}
			continue
		}
		// A task: ask the database next time (tasks_version 0).
		version = 0
		backoff = d.cfg.FetchInterval
		if err := d.accept(ctx, t); err != nil {
			d.log.Error("accepting a task", "task", t.GetId(), "err", err)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (d *Daemon) fetch(ctx context.Context, version int64) (*runnerv1.Task, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.FetchTimeout)
	defer cancel()
	resp, err := d.rpc.FetchTask(ctx, connect.NewRequest(&runnerv1.FetchTaskRequest{TasksVersion: version}))
	if err != nil {
		return nil, 0, err
	}
	return resp.Msg.GetTask(), resp.Msg.GetTasksVersion(), nil
}

// accept translates a fetched task, saves its record and starts reporting
// it (publishing its job). It holds one slot, released when the task ends.
func (d *Daemon) accept(ctx context.Context, t *runnerv1.Task) error {
	rec := taskRecord{TaskID: t.GetId(), Steps: payloadSteps(t.GetWorkflowPayload())}
	req, err := TranslateTask(TaskInput{Task: t, Instance: d.cfg.Credentials.UUID, Labels: d.cfg.Labels,
		Sealer: d.deps.Sealer, ServerURL: d.cfg.Credentials.Address})
	switch {
	case errors.Is(err, ErrSkipped):
		rec.Failure, rec.Skipped = err.Error(), true
	case err != nil:
		rec.Failure = err.Error()
	default:
		body, err := jobspec.Marshal(req)
		if err != nil {
			rec.Failure = fmt.Sprintf("encoding the job: %v", err)
			break
		}
		rec.JobID, rec.Label, rec.Request, rec.Steps = req.JobID, req.RunsOn, body, len(req.Steps)
	}
	if rec.JobID == "" {
		rec.JobID = fmt.Sprintf("unpublished-%d", rec.TaskID)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		<-d.slots
		return err
	}
	// Saved before anything is published, so a restart finds the task.
	if err := d.deps.Store.PutReport(ctx, d.recordKey(rec.TaskID), b); err != nil {
		<-d.slots
		return fmt.Errorf("saving task %d: %w", rec.TaskID, err)
	}
	d.log.Info("task fetched", "task", rec.TaskID, "job_id", rec.JobID, "label", rec.Label)
	return d.start(ctx, rec, false, true)
}

// start makes the task's reporter and runs the task in a goroutine; the
// task releases its slot (when it holds one) when it ends.
func (d *Daemon) start(ctx context.Context, rec taskRecord, resumed, slot bool) error {
	release := func() {
		if slot {
			<-d.slots
		}
	}
	rep, err := newReporter(ctx, reporterConfig{TaskID: rec.TaskID, JobID: rec.JobID, Steps: rec.Steps,
		Key: d.reportKey(rec.TaskID), Client: d.rpc, Store: d.deps.Store, Log: d.cfg.Log})
	if err != nil {
		release()
		return err
	}
	tk := &task{rec: rec, rep: rep, wake: make(chan struct{}, 1)}
	d.mu.Lock()
	d.tasks[rec.JobID] = tk
	d.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer release()
		d.runTask(context.WithoutCancel(ctx), tk, resumed)
		d.mu.Lock()
		delete(d.tasks, rec.JobID)
		d.mu.Unlock()
	}()
	return nil
}

// dispatch hands the events of the runner's route to their tasks.
func (d *Daemon) dispatch(events <-chan queue.Delivery) {
	for dl := range events {
		ev, err := jobspec.DecodeEvent(dl.Body())
		if err != nil {
			d.log.Error("dropping an unreadable event", "err", err)
			_ = dl.Ack()
			continue
		}
		d.mu.Lock()
		tk := d.tasks[ev.JobID]
		d.mu.Unlock()
		if tk == nil {
			// A job this runner no longer reports (finished, or a stale
			// duplicate).
			_ = dl.Ack()
			continue
		}
		tk.rep.Add(*ev, func() { _ = dl.Ack() })
		select {
		case tk.wake <- struct{}{}:
		default:
		}
	}
}

// runTask publishes the task's job (unless resumed and already stored),
// reports its events until it is over, and finishes the report. ctx does
// not end with the daemon: a task in flight is reported to its end.
func (d *Daemon) runTask(ctx context.Context, tk *task, resumed bool) {
	rec := tk.rec
	log := d.log.With("task", rec.TaskID, "job_id", rec.JobID)
	keep := false // the daemon stops before the task ended
	defer func() {
		if keep {
			return
		}
		if err := d.deps.Store.DeleteReport(ctx, d.recordKey(rec.TaskID)); err != nil {
			log.Warn("deleting the task record", "err", err)
		}
	}()
	if rec.Failure != "" {
		result, why := runnerv1.Result_RESULT_FAILURE, "Error: "+rec.Failure
		if rec.Skipped {
			result, why = runnerv1.Result_RESULT_SKIPPED, "Skipped: "+rec.Failure
		}
		log.Info("task cannot run", "reason", rec.Failure)
		d.finishResult(ctx, tk, result, why)
		return
	}
	if !resumed || d.jobUnknown(ctx, rec.JobID) {
		err := d.deps.Queue.PublishJob(ctx, rec.Label, rec.Request)
		switch {
		case errors.Is(err, queue.ErrNoRoute):
			d.finishResult(ctx, tk, runnerv1.Result_RESULT_FAILURE,
				fmt.Sprintf("Error: no orchestrator serves the label %q; the job cannot run", rec.Label))
			return
		case err != nil:
			d.finishResult(ctx, tk, runnerv1.Result_RESULT_FAILURE, fmt.Sprintf("Error: publishing the job: %v", err))
			return
		}
	}
	tick := time.NewTicker(d.cfg.ReportInterval)
	defer tick.Stop()
	// endedAt is when the server ended the task (a cancel); errorAt when
	// an error event came without a job_finished yet.
	var endedAt, errorAt time.Time
	for !tk.rep.JobFinished() {
		if tk.rep.Done() {
			if errorAt.IsZero() {
				errorAt = time.Now()
			} else if time.Since(errorAt) > 10*time.Second {
				break
			}
		}
		select {
		case <-tick.C:
		case <-tk.wake:
			if !tk.rep.NeedsFlush() && !tk.rep.Done() {
				continue // the tick sends them
			}
		case <-d.quit:
			// The daemon stops before the job ended: send what we have;
			// the record and the report stay for the next process.
			if _, err := tk.rep.Flush(ctx); err != nil {
				log.Warn("reporting to the server", "err", err)
			}
			log.Info("daemon stopping; the task will be resumed by the next start")
			keep = true
			return
		}
		res, err := tk.rep.Flush(ctx)
		if err != nil {
			log.Warn("reporting to the server", "err", err)
		}
		if res != runnerv1.Result_RESULT_UNSPECIFIED && endedAt.IsZero() {
			endedAt = time.Now()
			log.Info("the server ended the task; cancelling the job", "result", res)
			reason := "cancelled on " + d.cfg.Credentials.Address
			if d.cancelWaiting(ctx, rec, reason) {
				log.Info("the job had not started; it never will")
				d.finishResult(ctx, tk, runnerv1.Result_RESULT_CANCELLED, "The job was cancelled before it started.")
				return
			}
			c, _ := jobspec.Marshal(jobspec.Cancel{Version: jobspec.Version, JobID: rec.JobID, Reason: reason})
			if err := d.deps.Queue.PublishCancel(ctx, c); err != nil {
				log.Error("publishing the cancel", "err", err)
			}
		}
		if !endedAt.IsZero() && time.Since(endedAt) > d.cfg.CancelGrace {
			log.Warn("the job did not end in time after the server ended the task; reporting it as is")
			break
		}
	}
	if tk.rep.Done() {
		if err := d.retryFinish(ctx, func() error { return tk.rep.Finish(ctx) }); err != nil {
			log.Error("finishing the report", "err", err)
		}
	} else {
		d.finishResult(ctx, tk, runnerv1.Result_RESULT_CANCELLED, "The job did not stop in time after the server ended the task.")
	}
	log.Info("task reported", "result", tk.rep.Result(), "server_result", tk.rep.result())
}

func (d *Daemon) finishResult(ctx context.Context, tk *task, result runnerv1.Result, why string) {
	if err := d.retryFinish(ctx, func() error { return tk.rep.FinishResult(ctx, result, why) }); err != nil {
		d.log.Error("finishing the report", "task", tk.rec.TaskID, "err", err)
	}
}

// retryFinish retries a failed Finish for a few minutes: the server may be
// restarting.
func (d *Daemon) retryFinish(ctx context.Context, f func() error) error {
	var err error
	wait := time.Second
	for range 8 {
		if err = f(); err == nil {
			return nil
		}
		d.log.Warn("finishing a task report failed; retrying", "err", err, "in", wait)
		if !sleep(ctx, wait) {
			return err
		}
		wait = min(wait*2, time.Minute)
	}
	return err
}

// cancelWaiting cancels the job in the store when no orchestrator has
// started it: a job still in the queue (unknown to the store) is recorded
// there as cancelled, so the orchestrator that takes it later drops it,
// and a job accepted but not started is cancelled at once. It reports
// whether it did; a job that started is left to the Cancel message.
func (d *Daemon) cancelWaiting(ctx context.Context, rec taskRecord, reason string) bool {
	log := d.log.With("task", rec.TaskID, "job_id", rec.JobID)
	before, err := d.deps.Store.GetJob(ctx, rec.JobID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		if _, err := d.deps.Store.InsertJob(ctx, rec.JobID, rec.Label, rec.Request); err != nil {
			log.Warn("recording the cancel of a waiting job", "err", err)
			return false
		}
	case err != nil:
		log.Warn("reading the job to cancel", "err", err)
		return false
	case before.State != store.Queued:
		return false
	}
	after, err := d.deps.Store.RequestCancel(ctx, rec.JobID, reason)
	if err != nil {
		log.Warn("cancelling a waiting job", "err", err)
		return false
	}
	return after.State == store.Cancelled
}

// jobUnknown reports whether no orchestrator stored the job yet (its
// request may have been lost with a daemon that died before publishing).
func (d *Daemon) jobUnknown(ctx context.Context, id string) bool {
	_, err := d.deps.Store.GetJob(ctx, id)
	return errors.Is(err, store.ErrNotFound)
}

// payloadSteps counts the steps of the one job of a payload (0 when it
// cannot be read): the server made one step row per entry.
func payloadSteps(payload []byte) int {
	var w struct {
		Jobs map[string]struct {
			Steps []yaml.Node `yaml:"steps"`
		} `yaml:"jobs"`
	}
	if yaml.Unmarshal(payload, &w) != nil || len(w.Jobs) != 1 {
		return 0
	}
	for _, j := range w.Jobs {
		return len(j.Steps)
	}
	return 0
}
