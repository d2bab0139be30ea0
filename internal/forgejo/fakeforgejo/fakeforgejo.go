// Package fakeforgejo is an in-memory fake of the Forgejo Actions runner API
// (runner.v1.RunnerService and ping.v1.PingService over connect-go), for tests
// of runner code.
//
// It reproduces the server semantics described in
// /work/shared/notes/forgejo-protocol.md, including the quirks a runner has to
// cope with on real servers:
//
//   - every RunnerService call but Register needs x-runner-uuid and
//     x-runner-token, otherwise CodeUnauthenticated "unregistered runner";
//   - FetchTask does not look at jobs at all when the runner sends the current,
//     nonzero tasks_version;
//   - a job is only handed to a runner that has ALL of its runs-on labels, and
//     an empty runs-on never matches;
//   - UpdateLog acknowledges without storing on empty rows, gaps and
//     already-stored ranges, and (by default, like the servers of the notes)
//     ignores no_more when nothing is appended;
//   - cancellation only reaches the runner in the UpdateTask response;
//   - a running task with no UpdateTask for ZombieTimeout becomes FAILURE.
//
// Tests create a Server with New, serve it with Start (or mount Handler), queue
// jobs with AddJob and observe what the runner reported with Task and WaitTask.
package fakeforgejo

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/google/uuid"
	"go.yaml.in/yaml/v3"
)

// DefaultRegistrationToken is the registration token accepted when
// Options.RegistrationToken is empty.
const DefaultRegistrationToken = "fake-registration-token"

// DefaultActionsURL is the gitea_default_actions_url sent in task contexts, the
// Forgejo default.
const DefaultActionsURL = "https://data.forgejo.org"

// Server-side limits, as on Forgejo.
const (
	// MaxLogRowSize is the length in bytes at which a stored log row (after
	// escaping of newlines) is truncated.
	MaxLogRowSize = 64 * 1024
	// MaxOutputKeyLen is the longest output key the server stores.
	MaxOutputKeyLen = 255
	// MaxOutputValueLen is the largest output value, in bytes, the server stores.
	MaxOutputValueLen = 1024 * 1024
)

// Options configures a Server. The zero value is usable.
type Options struct {
	// RegistrationToken is the registration token accepted by Register. It is
	// reusable, as on Forgejo. Default DefaultRegistrationToken.
	RegistrationToken string
	// ZombieTimeout turns a running task that received no UpdateTask for this
	// long into FAILURE and archives its log. 0 means never. A sweep goroutine
	// checks every ZombieTimeout/10; SweepZombies runs a sweep synchronously.
	ZombieTimeout time.Duration
	// NoDeclare makes Declare answer connect.CodeUnimplemented, like a server
	// older than 1.21.
	NoDeclare bool
	// FixedEmptyNoMore makes UpdateLog honour no_more even when the call
	// appends no rows (as after go-gitea/gitea PR 37631), provided the call
	// leaves no gap. The zero value reproduces the bug of the servers in the
	// notes: no_more is ignored unless at least one row is appended, so a
	// runner must send a final row together with no_more.
	FixedEmptyNoMore bool
	// ServerURL is the instance URL put in task contexts (server_url, api_url,
	// repositoryUrl). When empty, Start fills it in; otherwise it is derived
	// from the Host of each FetchTask request.
	ServerURL string
	// Log receives debug logs of every call. Default: discard.
	Log *slog.Logger
}

// JobSpec describes a waiting job, as a real server would hand it out.
type JobSpec struct {
	// Payload is the workflow YAML with exactly one job, shaped like a real
	// server's payload (matrix already reduced to single-element arrays, needs
	// erased, name evaluated). It is sent verbatim, even if it does not parse.
	Payload string
	// RunsOn holds the job's runs-on label names. A runner gets the job only if
	// ALL of them are among its labels; an empty RunsOn never matches.
	RunsOn []string
	// Context holds task context keys, merged (shallowly) over the defaults a
	// real server sends. Values are converted through JSON, so numbers become
	// float64 as on the wire.
	Context map[string]any
	// Secrets are the repository secrets. The server adds GITHUB_TOKEN,
	// GITEA_TOKEN and FORGEJO_TOKEN, all equal to the task token.
	Secrets map[string]string
	// Vars are the configuration variables.
	Vars map[string]string
	// Needs are the results and outputs of the jobs this job depends on.
	Needs map[string]*runnerv1.TaskNeed
}

// Row is one stored log row.
type Row struct {
	// Time is the time carried by the LogRow (zero when absent).
	Time time.Time
	// Content is the stored content: newlines escaped as `\n`, truncated at
	// MaxLogRowSize bytes.
	Content string
	// Received is the server clock when the row was stored.
	Received time.Time
}

// StepView is the server's record of one step of a task.
type StepView struct {
	// Name is a display name derived from the payload step.
	Name string
	// Result is the last result reported for the step.
	Result runnerv1.Result
	// Started and Stopped are the last reported times (zero when absent).
	Started, Stopped time.Time
	// LogIndex is the absolute row number of the step's first log row.
	LogIndex int64
	// LogLength is the step's number of log rows.
	LogLength int64
	// Reported tells whether any StepState for this step was received.
	Reported bool
}

// TaskView is a snapshot of a task.
type TaskView struct {
	// ID is the task id (0 if the task does not exist).
	ID int64
	// JobID is the id of the payload's only job ("" if it did not parse).
	JobID string
	// Status is the server's status: UNSPECIFIED while waiting or running.
	Status runnerv1.Result
	// Picked tells whether a runner fetched the task.
	Picked bool
	// RunnerUUID is the uuid of the runner that fetched the task.
	RunnerUUID string
	// Token is the task token (context token and *_TOKEN secrets).
	Token string
	// Created, Started and Stopped are the times the job was added, fetched
	// and got a final status (Stopped is the runner's stopped_at if it sent
	// one).
	Created, Started, Stopped time.Time
	// Steps holds one entry per payload step.
	Steps []StepView
	// StepIDErrors counts StepStates whose id was not a step index.
	StepIDErrors int
	// Rows are the stored log rows.
	Rows []Row
	// Archived tells whether the log was archived (no_more accepted, or the
	// zombie sweep).
	Archived bool
	// Outputs are the stored job outputs.
	Outputs map[string]string
	// LastUpdate is the time of the last UpdateTask (or of the fetch).
	LastUpdate time.Time
	// Calls counts RPCs per name ("UpdateTask", "UpdateLog") for this task.
	Calls map[string]int
	// FinalAt is when a final status was first set.
	FinalAt time.Time
	// ReportedResult is the first final result the runner sent via
	// UpdateTask, even if the task had already been finalized by the server
	// (Cancel, zombie sweep).
	ReportedResult runnerv1.Result
	// ResultBeforeArchive is true if a final result arrived via UpdateTask
	// while the log was not yet archived. A well-behaved runner archives first,
	// so tests assert it is false.
	ResultBeforeArchive bool
}

// Done tells whether the task has a final status.
func (v TaskView) Done() bool { return v.Status != runnerv1.Result_RESULT_UNSPECIFIED }

// Log returns the stored log contents joined with newlines.
func (v TaskView) Log() string {
	var b strings.Builder
	for _, r := range v.Rows {
		b.WriteString(r.Content)
		b.WriteByte('\n')
	}
	return b.String()
}

// RunnerView is a snapshot of a registered runner.
type RunnerView struct {
	// ID is the runner's numeric id, from 1.
	ID int64
	// UUID and Token are the runner's credentials.
	UUID, Token string
	// Name is the registered name.
	Name string
	// Labels are the labels as registered or declared (names, possibly with
	// a :schema suffix, which matching ignores).
	Labels []string
	// Version is the runner version from Register or Declare.
	Version string
	// Ephemeral is the flag sent at registration (recorded only: Forgejo has
	// no ephemeral runners).
	Ephemeral bool
	// Declared tells whether Declare succeeded at least once.
	Declared bool
	// Offline tells whether the runner was created with AddOfflineRunner.
	Offline bool
	// LastOnline is the time of the last authenticated call.
	LastOnline time.Time
}

// Server is a fake Forgejo Actions server. All methods are safe for concurrent
// use.
type Server struct {
	opts    Options
	log     *slog.Logger
	handler http.Handler

	mu           sync.Mutex
	changed      chan struct{} // closed and replaced on every state change
	runners      map[string]*runnerRec
	nextRunnerID int64
	tasks        map[int64]*taskRec
	nextTaskID   int64
	tasksVersion int64
	faults       map[string][]error

	closeOnce sync.Once
	stop      chan struct{}
	sweepDone chan struct{}
}

type runnerRec struct {
	RunnerView
}

type taskRec struct {
	id       int64
	jobID    string
	payload  []byte
	runsOn   []string
	context  map[string]any
	secrets  map[string]string
	vars     map[string]string
	needs    map[string]*runnerv1.TaskNeed
	token    string
	sha      string
	status   runnerv1.Result
	picked   bool
	runner   string
	created  time.Time
	started  time.Time
	stopped  time.Time
	steps    []StepView
	stepErrs int
	rows     []Row
	archived bool
	outputs  map[string]string
	lastUpd  time.Time
	calls    map[string]int
	finalAt  time.Time
	reported runnerv1.Result
	rba      bool
}

// New returns a Server. If opts.ZombieTimeout is positive it starts the sweep
// goroutine, which Close stops (Start arranges that).
func New(opts Options) *Server {
	if opts.RegistrationToken == "" {
		opts.RegistrationToken = DefaultRegistrationToken
	}
	lg := opts.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts:      opts,
		log:       lg.With("component", "fakeforgejo"),
		changed:   make(chan struct{}),
		runners:   make(map[string]*runnerRec),
		tasks:     make(map[int64]*taskRec),
		faults:    make(map[string][]error),
		stop:      make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
	s.handler = s.buildHandler()
	if opts.ZombieTimeout > 0 {
		go s.sweepLoop()
	} else {
		close(s.sweepDone)
	}
	return s
}

// Close stops the zombie sweep goroutine. It does not close any HTTP server.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.stop) })
	<-s.sweepDone
}

// Start serves the fake on a new httptest server bound to 127.0.0.1, closed
// (together with the Server) on t.Cleanup. It returns the instance URL, without
// /api/actions.
func (s *Server) Start(t testing.TB) string {
	t.Helper()
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.Close()
		s.Close()
	})
	s.mu.Lock()
	if s.opts.ServerURL == "" {
		s.opts.ServerURL = hs.URL
	}
	s.mu.Unlock()
	return hs.URL
}

// notifyLocked wakes up WaitTask callers. s.mu must be held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) sweepLoop() {
	defer close(s.sweepDone)
	every := s.opts.ZombieTimeout / 10
	if every <= 0 {
		every = time.Millisecond
	}
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tk.C:
			s.SweepZombies()
		}
	}
}

// SweepZombies runs one zombie sweep now: every running task whose last
// UpdateTask is older than Options.ZombieTimeout becomes FAILURE and its log is
// archived. It returns the ids of the tasks it failed. It does nothing when
// ZombieTimeout is 0.
func (s *Server) SweepZombies() []int64 {
	if s.opts.ZombieTimeout <= 0 {
		return nil
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var failed []int64
	for _, t := range s.tasks {
		if !t.picked || t.status != runnerv1.Result_RESULT_UNSPECIFIED {
			continue
		}
		if now.Sub(t.lastUpd) < s.opts.ZombieTimeout {
			continue
		}
		t.status = runnerv1.Result_RESULT_FAILURE
		t.finalAt = now
		t.stopped = now
		t.archived = true
		failed = append(failed, t.id)
	}
	if len(failed) > 0 {
		slices.Sort(failed)
		s.log.Info("zombie tasks failed", "tasks", failed)
		s.notifyLocked()
	}
	return failed
}

// AddOfflineRunner registers a runner the way `forgejo forgejo-cli actions
// register --secret` does: the uuid is the first 16 characters of secret taken
// as raw bytes, the token is the whole secret. Registering the same secret again
// updates the name and labels. It panics if secret is shorter than 16 bytes.
func (s *Server) AddOfflineRunner(secret, name string, labels []string) string {
	if len(secret) < 16 {
		panic(fmt.Sprintf("fakeforgejo: AddOfflineRunner: secret must have at least 16 characters, got %d", len(secret)))
	}
	u, err := uuid.FromBytes([]byte(secret[:16]))
	if err != nil {
		panic(fmt.Sprintf("fakeforgejo: AddOfflineRunner: %v", err))
	}
	id := u.String()
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.runners[id]; ok {
		r.Name = name
		r.Labels = slices.Clone(labels)
		r.Token = secret
	} else {
		s.nextRunnerID++
		s.runners[id] = &runnerRec{RunnerView{
			ID:      s.nextRunnerID,
			UUID:    id,
			Token:   secret,
			Name:    name,
			Labels:  slices.Clone(labels),
			Offline: true,
		}}
	}
	s.notifyLocked()
	return id
}

// Runners returns snapshots of the registered runners, ordered by id.
func (s *Server) Runners() []RunnerView {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RunnerView, 0, len(s.runners))
	for _, r := range s.runners {
		v := r.RunnerView
		v.Labels = slices.Clone(v.Labels)
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// TasksVersion returns the current tasks_version.
func (s *Server) TasksVersion() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tasksVersion
}

// AddJob queues a waiting job and bumps tasks_version. Task ids start at 1 and
// increase. The number of steps is the length of jobs.<only job>.steps in the
// payload; a payload that does not parse (or does not have exactly one job) is
// still handed out, with 0 steps.
func (s *Server) AddJob(j JobSpec) int64 {
	now := time.Now()
	jobID, steps, perr := parsePayload(j.Payload)
	if perr != nil {
		s.log.Warn("job payload does not parse; handing it out with 0 steps", "err", perr)
	}

	token := randomHex(20)
	if tok, ok := j.Context["token"].(string); ok && tok != "" {
		token = tok
	}
	secrets := make(map[string]string, len(j.Secrets)+3)
	maps.Copy(secrets, j.Secrets)
	for _, k := range []string{"GITHUB_TOKEN", "GITEA_TOKEN", "FORGEJO_TOKEN"} {
		secrets[k] = token
	}
	ctxOverride := s.normalizeContext(j.Context)

	needs := make(map[string]*runnerv1.TaskNeed, len(j.Needs))
	for k, n := range j.Needs {
		if n == nil {
			continue
		}
		needs[k] = &runnerv1.TaskNeed{Outputs: maps.Clone(n.Outputs), Result: n.Result}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextTaskID++
	t := &taskRec{
		id:      s.nextTaskID,
		jobID:   jobID,
		payload: []byte(j.Payload),
		runsOn:  slices.Clone(j.RunsOn),
		context: ctxOverride,
		secrets: secrets,
		vars:    maps.Clone(j.Vars),
		needs:   needs,
		token:   token,
		sha:     randomHex(20),
		created: now,
		steps:   steps,
		outputs: make(map[string]string),
		calls:   make(map[string]int),
	}
	s.tasks[t.id] = t
	s.tasksVersion++
	s.log.Debug("job added", "task", t.id, "job", jobID, "runs_on", j.RunsOn, "steps", len(steps), "tasks_version", s.tasksVersion)
	s.notifyLocked()
	return t.id
}

// Cancel cancels a task as a user would (StopTask): its status becomes
// CANCELLED at once and tasks_version is bumped. A running runner learns it only
// from the next UpdateTask response; logs are still accepted until archived. A
// waiting task is never handed out after that. Cancelling a finished task does
// nothing.
func (s *Server) Cancel(taskID int64) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok || t.status != runnerv1.Result_RESULT_UNSPECIFIED {
		return
	}
	t.status = runnerv1.Result_RESULT_CANCELLED
	t.finalAt = now
	t.stopped = now
	s.tasksVersion++
	s.log.Debug("task cancelled", "task", taskID)
	s.notifyLocked()
}

// Task returns a deep-copied snapshot of a task; the zero TaskView if the task
// does not exist.
func (s *Server) Task(taskID int64) TaskView {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[taskID]
	if !ok {
		return TaskView{}
	}
	return t.view()
}

// Tasks returns snapshots of all tasks, ordered by id.
func (s *Server) Tasks() []TaskView {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TaskView, 0, len(s.tasks))
	for _, t := range s.tasks {
		out = append(out, t.view())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// WaitTask waits until cond holds for the task's snapshot and returns that
// snapshot. It returns an error if the task does not exist or ctx ends first
// (with the last snapshot).
func (s *Server) WaitTask(ctx context.Context, taskID int64, cond func(TaskView) bool) (TaskView, error) {
	for {
		s.mu.Lock()
		t, ok := s.tasks[taskID]
		if !ok {
			s.mu.Unlock()
			return TaskView{}, fmt.Errorf("fakeforgejo: task %d does not exist", taskID)
		}
		v := t.view()
		ch := s.changed
		s.mu.Unlock()
		if cond(v) {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("fakeforgejo: waiting for task %d: %w", taskID, ctx.Err())
		case <-ch:
		}
	}
}

// InjectError makes the next n calls of the RPC named procedure ("Register",
// "Declare", "FetchTask", "UpdateTask", "UpdateLog" or "Ping") fail with err,
// before authentication and without changing any state. Use a *connect.Error to
// choose the code.
func (s *Server) InjectError(procedure string, err error, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults[procedure] = append(s.faults[procedure], err)
	}
}

// takeFault pops an injected error for the RPC name, if any.
func (s *Server) takeFault(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.faults[name]
	if len(q) == 0 {
		return nil
	}
	err := q[0]
	s.faults[name] = q[1:]
	return err
}

func (t *taskRec) view() TaskView {
	v := TaskView{
		ID:                  t.id,
		JobID:               t.jobID,
		Status:              t.status,
		Picked:              t.picked,
		RunnerUUID:          t.runner,
		Token:               t.token,
		Created:             t.created,
		Started:             t.started,
		Stopped:             t.stopped,
		Steps:               slices.Clone(t.steps),
		StepIDErrors:        t.stepErrs,
		Rows:                slices.Clone(t.rows),
		Archived:            t.archived,
		Outputs:             maps.Clone(t.outputs),
		LastUpdate:          t.lastUpd,
		Calls:               maps.Clone(t.calls),
		FinalAt:             t.finalAt,
		ReportedResult:      t.reported,
		ResultBeforeArchive: t.rba,
	}
	return v
}

// parsePayload returns the id and steps of the payload's only job.
func parsePayload(payload string) (string, []StepView, error) {
	var wf struct {
		Jobs map[string]struct {
			Steps []map[string]any `yaml:"steps"`
		} `yaml:"jobs"`
	}
	if err := yaml.Unmarshal([]byte(payload), &wf); err != nil {
		return "", nil, fmt.Errorf("parse payload: %w", err)
	}
	if len(wf.Jobs) != 1 {
		return "", nil, fmt.Errorf("payload has %d jobs, want exactly 1", len(wf.Jobs))
	}
	var (
		id    string
		steps []StepView
	)
	for jobID, job := range wf.Jobs {
		id = jobID
		steps = make([]StepView, len(job.Steps))
		for i, st := range job.Steps {
			steps[i].Name = stepName(i, st)
		}
	}
	return id, steps, nil
}

func stepName(i int, st map[string]any) string {
	for _, k := range []string{"name", "id"} {
		if v, ok := st[k].(string); ok && v != "" {
			return v
		}
	}
	if v, ok := st["run"].(string); ok {
		line, _, _ := strings.Cut(strings.TrimSpace(v), "\n")
		return "Run " + line
	}
	if v, ok := st["uses"].(string); ok {
		return "Run " + v
	}
	return fmt.Sprintf("step %d", i)
}

// normalizeContext converts every value through JSON so that it fits a
// structpb.Struct; values that do not convert are dropped with a log.
func (s *Server) normalizeContext(in map[string]any) map[string]any {
	out := make(map[string]any, len(in))
	for k, v := range in {
		b, err := json.Marshal(v)
		if err != nil {
			s.log.Error("dropping context key that does not marshal to JSON", "key", k, "err", err)
			continue
		}
		var nv any
		if err := json.Unmarshal(b, &nv); err != nil {
			s.log.Error("dropping context key that does not unmarshal from JSON", "key", k, "err", err)
			continue
		}
		out[k] = nv
	}
	return out
}

// defaultContext returns the context keys a real server sends for a push.
func defaultContext(serverURL, jobID string, taskID int64, token string) map[string]any {
	const owner, repo = "fake-owner", "fake-owner/fake-repo"
	run := fmt.Sprint(taskID)
	return map[string]any{
		"action":                    "",
		"action_path":               "",
		"action_ref":                "",
		"action_repository":         "",
		"action_status":             "",
		"actor":                     "fake-user",
		"api_url":                   serverURL + "/api/v1",
		"base_ref":                  "",
		"env":                       "",
		"event":                     map[string]any{},
		"event_name":                "push",
		"event_path":                "",
		"gitea_default_actions_url": DefaultActionsURL,
		"gitea_runtime_token":       fakeJWT(taskID),
		"graphql_url":               "",
		"head_ref":                  "",
		"job":                       jobID,
		"path":                      "",
		"ref":                       "refs/heads/main",
		"ref_name":                  "main",
		"ref_protected":             false,
		"ref_type":                  "branch",
		"repository":                repo,
		"repository_owner":          owner,
		"repositoryUrl":             serverURL + "/" + repo,
		"retention_days":            "",
		"run_attempt":               "1",
		"run_id":                    run,
		"run_number":                run,
		"secret_source":             "Actions",
		"server_url":                serverURL,
		"sha":                       randomHex(20),
		"token":                     token,
		"triggering_actor":          "fake-user",
		"workflow":                  "test.yml",
		"workspace":                 "",
	}
}

// fakeJWT returns a token shaped like the JWT a real server sends as
// gitea_runtime_token (its signature is random; nothing verifies it).
func fakeJWT(taskID int64) string {
	enc := base64.RawURLEncoding
	hdr := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	body := enc.EncodeToString(fmt.Appendf(nil, `{"TaskID":%d,"RunID":%d,"JobID":%d,"Ac":""}`, taskID, taskID, taskID))
	return hdr + "." + body + "." + enc.EncodeToString([]byte(randomHex(16)))
}

// randomHex returns 2n random hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails.
	return hex.EncodeToString(b)
}

// labelName returns the name part of a runner label (name[:schema[:arg]]).
func labelName(l string) string {
	name, _, _ := strings.Cut(l, ":")
	return name
}

// matchLabels reports whether every runs-on label is among the runner labels.
// An empty runs-on never matches.
func matchLabels(runsOn, runnerLabels []string) bool {
	if len(runsOn) == 0 {
		return false
	}
	have := make(map[string]bool, len(runnerLabels))
	for _, l := range runnerLabels {
		have[labelName(l)] = true
	}
	for _, l := range runsOn {
		if !have[l] {
			return false
		}
	}
	return true
}
