package forgejo

// This file holds the reporter of one Forgejo task: it turns the job's
// jobspec.Event stream into log rows (UpdateLog) and task and step states
// (UpdateTask), and it makes the report survive a restart of the daemon.
//
// Log rows. Every event that shows something yields rows; a row's absolute
// index is the number of rows generated before it. Row content and time come
// only from event data, so the rows of redelivered events are the same rows
// again, at the same indexes.
//
// Sections. Forgejo shows "Set up job" for the rows before the first step's
// log_index, each step's rows [log_index, log_index+log_length), and
// "Complete job" for the rows after the last step. The reporter follows the
// stream, not ev.Step:
//   - rows before the first step_started or skipped step_finished are in
//     "Set up job";
//   - a step's log_index is the row count at its step_started and its
//     log_length counts the rows up to its step_finished: every row generated
//     while the step runs is the step's, whatever ev.Step says;
//   - rows between a step_finished and the next step_started are in no step
//     (the task's raw log still has them; the UI shows them in no section);
//     after the last step they are in "Complete job";
//   - a step_finished without a step_started (a skipped step) has
//     log_index = the row count then, log_length 0 and started_at = stopped_at
//     = the event's time;
//   - steps are placed in index order only: a step event for an index below
//     one already started is logged and ignored, steps passed over by a later
//     step get log_index there and log_length 0, so log ranges are always in
//     step order and never overlap;
//   - when the job is over (job_finished or error), a running step is closed
//     there: its result is CANCELLED if the job was cancelled, else FAILURE;
//     steps never started nor finished get SKIPPED with log_length 0 and no
//     times. The rows of the ending events themselves ("Error: ...", the
//     job_finished message unless an error event said it) and any later
//     rows come after the last step: "Complete job".
//
// Acknowledgement. A delivery's ack func is held until the rows of its event
// are stored by the server and the reporter's state that includes the event
// is saved in the store (a clean point: the server's ack covers every row
// generated so far). If the daemon dies, the events whose deliveries were not
// acked come again and regenerate exactly the rows past the saved row count;
// rows the server already has (it may be ahead of the saved state) are
// dropped without sending. So the task log has no gap and no duplicate.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/store"
)

// Limits and timings of the reporter.
const (
	// maxPendingRows and maxPendingAcks bound what Add accumulates: beyond
	// them the caller should Flush before adding more (see Pending).
	maxPendingRows = 4096
	maxPendingAcks = 200
	// heartbeatInterval is the longest time between two UpdateTask calls
	// made by Flush. The server fails a task without one for 10 minutes,
	// but a cancel reaches the runner only in an UpdateTask answer, so this
	// bounds how long a user's cancel goes unnoticed (forgejo-runner: 1 s).
	heartbeatInterval = 2 * time.Second
	// batchRows and batchBytes bound one UpdateLog request.
	batchRows  = 1000
	batchBytes = 4 << 20
	// finalLogTries and finalTaskTries bound the retries of Finish, which
	// wait retryBase, then twice as long each time.
	finalLogTries  = 10
	finalTaskTries = 10
	// outputTries bounds the final UpdateTask calls made until the server
	// acknowledges every output.
	outputTries = 5
	retryBase   = 100 * time.Millisecond
	// maxLogRounds bounds the UpdateLog calls of one Flush that make no
	// progress (the server answering a lower ack than expected).
	maxLogRounds = 4
)

// lostRowContent is the content of the rows the reporter sends in place of
// rows the server lost after acknowledging them, so that the rows after them
// keep their indexes.
const lostRowContent = "(log rows lost)"

// reportVersion is the version of the saved reportState.
const reportVersion = 1

// runnerClient is the part of runnerv1connect.RunnerServiceClient the
// reporter uses.
type runnerClient interface {
	UpdateTask(context.Context, *connect.Request[runnerv1.UpdateTaskRequest]) (*connect.Response[runnerv1.UpdateTaskResponse], error)
	UpdateLog(context.Context, *connect.Request[runnerv1.UpdateLogRequest]) (*connect.Response[runnerv1.UpdateLogResponse], error)
}

// reportStore is the part of store.Store the reporter uses.
type reportStore interface {
	PutReport(ctx context.Context, key string, value []byte) error
	// GetReport returns store.ErrNotFound when key is absent.
	GetReport(ctx context.Context, key string) ([]byte, error)
	DeleteReport(ctx context.Context, key string) error
}

// reporterConfig configures the reporter of one task.
type reporterConfig struct {
	TaskID int64
	JobID  string
	// Steps is the number of workflow steps of the task's payload.
	Steps int
	// Key is the store key of the reporting state.
	Key    string
	Client runnerClient
	Store  reportStore
	Log    *slog.Logger     // nil discards
	Now    func() time.Time // nil is time.Now
}

// savedStep is the state of one step.
type savedStep struct {
	Result    runnerv1.Result `json:"result,omitzero"`
	StartedAt time.Time       `json:"started_at,omitzero"`
	StoppedAt time.Time       `json:"stopped_at,omitzero"`
	LogIndex  int64           `json:"log_index,omitzero"`
	LogLength int64           `json:"log_length,omitzero"`
	// Placed means LogIndex is fixed; Started that a step_started came;
	// Closed that LogLength is fixed; Finished that a step_finished came
	// (Result is then the step's own).
	Placed   bool `json:"placed,omitzero"`
	Started  bool `json:"started,omitzero"`
	Closed   bool `json:"closed,omitzero"`
	Finished bool `json:"finished,omitzero"`
}

// reportState is what the reporter saves in the store at clean points:
// everything that the events up to LastSeq made, once the server has every
// row they generated.
type reportState struct {
	Version int    `json:"version"`
	TaskID  int64  `json:"task_id"`
	JobID   string `json:"job_id"`
	// LastSeq is the Seq of the last event applied.
	LastSeq int64 `json:"last_seq"`
	// RowCount is the number of rows the events up to LastSeq generated.
	RowCount int64 `json:"row_count"`
	// Acked is the server's ack (its row count) when the state was saved.
	Acked     int64     `json:"acked"`
	StartedAt time.Time `json:"started_at"`
	StoppedAt time.Time `json:"stopped_at,omitzero"`
	// Open is the index of the running step, -1 when none; Next is the
	// lowest step index that may still start.
	Open  int         `json:"open"`
	Next  int         `json:"next"`
	Steps []savedStep `json:"steps"`
	// Result is the task's result, JobResult whether a job_finished set it.
	Result    runnerv1.Result   `json:"result,omitzero"`
	JobResult bool              `json:"job_result,omitzero"`
	Outputs   map[string]string `json:"outputs,omitempty"`
	// LastError is the message of the last error event.
	LastError string `json:"last_error,omitzero"`
	Done      bool   `json:"done,omitzero"`
	// LogClosed is set once UpdateLog with no_more succeeded.
	LogClosed bool `json:"log_closed,omitzero"`
}

// reporter reports one task to the Forgejo server. Add may be called
// concurrently with Flush; Flush, Finish and FailNow are serialised.
type reporter struct {
	cfg reporterConfig
	log *slog.Logger
	now func() time.Time
	// sleep waits d or until ctx ends; retryBase is the first retry delay.
	// Tests replace both.
	sleep     func(ctx context.Context, d time.Duration) error
	retryBase time.Duration

	// send serialises the calls to the server and the store.
	send sync.Mutex

	mu sync.Mutex
	st reportState
	// savedSeq is the LastSeq of the state in the store.
	savedSeq int64
	// dirty is set when the state changed in a way LastSeq does not show
	// (FinishResult, LogClosed).
	dirty bool
	// buf holds the rows from index ack to st.RowCount that the server
	// has not acknowledged; rows below ack are not kept.
	buf []*runnerv1.LogRow
	ack int64
	// probed is false until the server's ack is known after a resume.
	probed bool
	// held are the acks of deliveries waiting for a clean point.
	held []func()
	// stepsVersion counts changes of the step states; sentVersion is the
	// one the last UpdateTask carried, sentSteps its steps.
	stepsVersion int64
	sentVersion  int64
	sentSteps    []*runnerv1.StepState
	lastTask     time.Time
	serverResult runnerv1.Result
	finished     bool
}

// newReporter loads the reporting state of the task from the store (a
// resume after a daemon restart) or starts a fresh one and saves it. On a
// resume it asks the server how many rows it stores; if that fails, the
// first Flush asks again.
func newReporter(ctx context.Context, cfg reporterConfig) (*reporter, error) {
	if cfg.Client == nil || cfg.Store == nil {
		return nil, errors.New("forgejo reporter: client and store are required")
	}
	if cfg.Steps < 0 {
		return nil, fmt.Errorf("forgejo reporter: %d steps", cfg.Steps)
	}
	r := &reporter{cfg: cfg, log: cfg.Log, now: cfg.Now, retryBase: retryBase, sleep: sleepCtx}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = r.log.With("task", cfg.TaskID, "job", cfg.JobID)
	if r.now == nil {
		r.now = time.Now
	}
	b, err := cfg.Store.GetReport(ctx, cfg.Key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		r.st = reportState{Version: reportVersion, TaskID: cfg.TaskID, JobID: cfg.JobID,
			StartedAt: r.now().UTC(), Open: -1, Steps: make([]savedStep, cfg.Steps)}
		r.probed = true
		if err := r.save(ctx, r.st); err != nil {
			return nil, err
		}
		return r, nil
	case err != nil:
		return nil, fmt.Errorf("loading the report of task %d: %w", cfg.TaskID, err)
	}
	if err := json.Unmarshal(b, &r.st); err != nil {
		return nil, fmt.Errorf("decoding the report of task %d: %w", cfg.TaskID, err)
	}
	if r.st.TaskID != cfg.TaskID {
		return nil, fmt.Errorf("the report under %q is of task %d, not %d", cfg.Key, r.st.TaskID, cfg.TaskID)
	}
	if len(r.st.Steps) != cfg.Steps {
		r.log.Warn("saved report has another number of steps", "saved", len(r.st.Steps), "steps", cfg.Steps)
		r.st.Steps = slices.Grow(r.st.Steps, cfg.Steps)[:cfg.Steps]
	}
	if r.st.Open >= cfg.Steps {
		r.st.Open = -1
	}
	r.st.Next = min(r.st.Next, cfg.Steps)
	r.savedSeq = r.st.LastSeq
	r.ack = r.st.Acked
	r.log.Info("resuming the report", "last_seq", r.st.LastSeq, "rows", r.st.RowCount, "acked", r.st.Acked)
	if !r.st.LogClosed {
		if err := r.probe(ctx); err != nil {
			r.log.Warn("asking the server for its log length", "err", err)
		}
	} else {
		r.probed = true
	}
	return r, nil
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// Add applies one event. ack acknowledges its delivery; it is called once the
// event's rows are on the server and its effect is saved in the store, or at
// once for a duplicate whose effect is saved already. ack may be nil. Add
// never blocks on the network; see Pending.
//
// Events must come in Seq order (redelivered ones included): an event whose
// Seq is not above the last one applied is taken for a duplicate.
func (r *reporter) Add(ev jobspec.Event, ack func()) {
	r.mu.Lock()
	switch {
	case r.finished:
		r.mu.Unlock()
		r.log.Debug("event after the report was finished", "seq", ev.Seq, "kind", ev.Kind)
		callAck(ack)
		return
	case ev.JobID != "" && r.cfg.JobID != "" && ev.JobID != r.cfg.JobID:
		r.mu.Unlock()
		r.log.Warn("event of another job", "seq", ev.Seq, "event_job", ev.JobID)
		callAck(ack)
		return
	case ev.Seq <= r.savedSeq:
		r.mu.Unlock()
		callAck(ack)
		return
	case ev.Seq <= r.st.LastSeq:
		// A duplicate of an event applied but not saved yet: its ack
		// waits for the same clean point as the first delivery's.
		r.hold(ack)
		r.mu.Unlock()
		return
	}
	r.apply(ev)
	r.st.LastSeq = ev.Seq
	r.hold(ack)
	r.mu.Unlock()
}

// hold keeps ack until the next clean point. r.mu is held.
func (r *reporter) hold(ack func()) {
	if ack != nil {
		r.held = append(r.held, ack)
	}
}

// callAck calls ack unless it is nil.
func callAck(ack func()) {
	if ack != nil {
		ack()
	}
}

// Pending returns the rows the server has not acknowledged and the delivery
// acks waiting for a clean point. Beyond maxPendingRows rows or
// maxPendingAcks acks the caller should Flush before adding more.
func (r *reporter) Pending() (rows, acks int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buf), len(r.held)
}

// NeedsFlush reports whether Pending is beyond maxPendingRows rows or
// maxPendingAcks acks.
func (r *reporter) NeedsFlush() bool {
	rows, acks := r.Pending()
	return rows > maxPendingRows || acks > maxPendingAcks
}

// Done reports whether the job is over: a job_finished or error event was
// applied, or FailNow was called.
func (r *reporter) Done() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.Done
}

// apply changes the state by one event. r.mu is held.
func (r *reporter) apply(ev jobspec.Event) {
	switch ev.Kind {
	case jobspec.EventAccepted:
		text := "Job accepted by orchestrator"
		if ev.Message != "" {
			text += ": " + ev.Message
		}
		r.addRow(ev.Time, text)
	case jobspec.EventVMBooting:
		text := "Booting VM"
		if ev.Message != "" {
			text += ": " + ev.Message
		}
		r.addRow(ev.Time, text)
	case jobspec.EventLog:
		for _, l := range ev.Lines {
			t := l.Time
			if t.IsZero() {
				t = ev.Time
			}
			r.addRow(t, rewriteCommands(l.Text))
		}
	case jobspec.EventDebugSSH:
		r.addRow(ev.Time, ev.Message)
	case jobspec.EventError:
		// The job ends before the row: it goes to "Complete job".
		r.st.LastError = ev.Message
		if !r.st.JobResult {
			r.st.Result = runnerv1.Result_RESULT_FAILURE
		}
		r.end(ev.Time, false)
		r.addRow(ev.Time, "Error: "+ev.Message)
	case jobspec.EventStepStarted:
		r.stepStarted(ev)
	case jobspec.EventStepFinished:
		r.stepFinished(ev)
	case jobspec.EventJobFinished:
		if r.st.JobResult {
			r.log.Warn("second job_finished event ignored", "seq", ev.Seq)
		} else {
			r.st.JobResult = true
			r.st.Result = protoResult(ev.Result)
			if len(ev.Outputs) > 0 {
				r.st.Outputs = maps.Clone(ev.Outputs)
			}
			r.end(ev.Time, true)
		}
		// Why the job ended, unless an error event said it already.
		if ev.Message != "" && ev.Message != r.st.LastError {
			r.addRow(ev.Time, ev.Message)
		}
	default:
		r.log.Warn("event of unknown kind ignored", "seq", ev.Seq, "kind", ev.Kind)
	}
}

// rewriteCommands turns the group commands of a line into the form the
// Forgejo UI folds.
func rewriteCommands(s string) string {
	switch {
	case strings.HasPrefix(s, "::group::"):
		return "##[group]" + strings.TrimPrefix(s, "::group::")
	case strings.HasPrefix(s, "::endgroup::"):
		return "##[endgroup]" + strings.TrimPrefix(s, "::endgroup::")
	}
	return s
}

// addRow generates the next row. Rows the server already has (below ack,
// after a resume) are not kept, nor rows after the log was archived (they
// cannot be stored; their events still count for the task state). r.mu is
// held.
func (r *reporter) addRow(t time.Time, content string) {
	idx := r.st.RowCount
	r.st.RowCount++
	if idx < r.ack || r.st.LogClosed {
		return
	}
	r.buf = append(r.buf, &runnerv1.LogRow{Time: timestamppb.New(t), Content: content})
}

// stepStarted opens step ev.Step at the current row. r.mu is held.
func (r *reporter) stepStarted(ev jobspec.Event) {
	i := ev.Step
	switch {
	case i < 0 || i >= len(r.st.Steps):
		r.log.Warn("step_started of a step out of range", "seq", ev.Seq, "step", i, "steps", len(r.st.Steps))
		return
	case r.st.Done:
		r.log.Warn("step_started after the job ended", "seq", ev.Seq, "step", i)
		return
	case i < r.st.Next:
		r.log.Warn("step_started out of order ignored", "seq", ev.Seq, "step", i, "next", r.st.Next)
		return
	}
	if r.st.Open >= 0 {
		r.log.Warn("step_started while another step runs", "seq", ev.Seq, "step", i, "running", r.st.Open)
		r.closeOpen(ev.Time)
	}
	r.placeUntil(i)
	s := &r.st.Steps[i]
	s.Placed, s.Started = true, true
	s.StartedAt = ev.Time
	s.LogIndex = r.st.RowCount
	r.st.Open = i
	r.st.Next = i + 1
	r.stepsVersion++
}

// stepFinished sets the result of step ev.Step and closes its log range.
// r.mu is held.
func (r *reporter) stepFinished(ev jobspec.Event) {
	i := ev.Step
	if i < 0 || i >= len(r.st.Steps) {
		r.log.Warn("step_finished of a step out of range", "seq", ev.Seq, "step", i, "steps", len(r.st.Steps))
		return
	}
	s := &r.st.Steps[i]
	if s.Finished {
		r.log.Warn("second step_finished ignored", "seq", ev.Seq, "step", i)
		return
	}
	switch {
	case r.st.Open == i:
		s.LogLength = r.st.RowCount - s.LogIndex
		s.Closed = true
		r.st.Open = -1
	case !s.Placed:
		// A step that never started (skipped): an empty range here.
		if r.st.Open >= 0 {
			r.log.Warn("step_finished while another step runs", "seq", ev.Seq, "step", i, "running", r.st.Open)
			r.closeOpen(ev.Time)
		}
		r.placeUntil(i)
		s.Placed, s.Closed = true, true
		s.LogIndex, s.LogLength = r.st.RowCount, 0
		s.StartedAt = ev.Time
		r.st.Next = i + 1
	}
	// Otherwise the range was fixed already (passed over or closed by a
	// later step): only the result and time change.
	s.Finished = true
	s.Result = protoResult(ev.Result)
	s.StoppedAt = ev.Time
	if s.StartedAt.IsZero() {
		s.StartedAt = ev.Time
	}
	r.stepsVersion++
}

// closeOpen closes the range of the running step without a result. r.mu is
// held.
func (r *reporter) closeOpen(t time.Time) {
	s := &r.st.Steps[r.st.Open]
	s.LogLength = r.st.RowCount - s.LogIndex
	s.Closed = true
	s.StoppedAt = t
	r.st.Open = -1
	r.stepsVersion++
}

// placeUntil gives the steps from Next to i (excluded), passed over, an
// empty range at the current row. r.mu is held.
func (r *reporter) placeUntil(i int) {
	for k := r.st.Next; k < i; k++ {
		s := &r.st.Steps[k]
		if !s.Placed {
			s.Placed, s.Closed = true, true
			s.LogIndex, s.LogLength = r.st.RowCount, 0
		}
	}
	if i > r.st.Next {
		r.st.Next = i
	}
}

// end marks the job over at t: the running step is closed, the other steps
// get their final results. authoritative is set for job_finished, whose
// time wins over an error event's. r.mu is held.
func (r *reporter) end(t time.Time, authoritative bool) {
	if !r.st.Done || authoritative {
		r.st.StoppedAt = t
	}
	r.st.Done = true
	if r.st.Open >= 0 {
		r.closeOpen(t)
	}
	r.placeUntil(len(r.st.Steps))
	r.finalizeSteps()
}

// finalizeSteps gives the steps without a step_finished their result from
// the task's. r.mu is held.
func (r *reporter) finalizeSteps() {
	for i := range r.st.Steps {
		s := &r.st.Steps[i]
		if s.Finished {
			continue
		}
		res := runnerv1.Result_RESULT_SKIPPED
		if s.Started {
			res = runnerv1.Result_RESULT_FAILURE
			if r.st.Result == runnerv1.Result_RESULT_CANCELLED {
				res = runnerv1.Result_RESULT_CANCELLED
			}
		}
		if s.Result != res {
			s.Result = res
			r.stepsVersion++
		}
	}
}

// protoResult maps a step or job result of jobspec to the protocol's;
// errored and unknown results are failures.
func protoResult(s string) runnerv1.Result {
	switch s {
	case jobspec.ResultSuccess:
		return runnerv1.Result_RESULT_SUCCESS
	case jobspec.ResultCancelled:
		return runnerv1.Result_RESULT_CANCELLED
	case jobspec.ResultSkipped:
		return runnerv1.Result_RESULT_SKIPPED
	}
	return runnerv1.Result_RESULT_FAILURE
}

// Flush sends the pending rows, saves the state and releases the held acks
// at a clean point, and sends the step states when they changed or every
// heartbeatInterval. It returns the task result of the server's last
// UpdateTask answer: UNSPECIFIED while the task runs, CANCELLED or FAILURE
// when the server ended it (the caller then cancels the job). The result is
// sticky: later Flushes return it again. An UpdateLog failure does not stop
// the heartbeat.
func (r *reporter) Flush(ctx context.Context) (runnerv1.Result, error) {
	r.send.Lock()
	defer r.send.Unlock()
	if r.isFinished() {
		return r.result(), nil
	}
	var errs []error
	if err := r.sendLog(ctx, false); err != nil {
		errs = append(errs, err)
	} else if err := r.checkpoint(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := r.heartbeat(ctx); err != nil {
		errs = append(errs, err)
	}
	return r.result(), errors.Join(errs...)
}

func (r *reporter) isFinished() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.finished
}

func (r *reporter) result() runnerv1.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.serverResult
}

// probe asks the server how many rows it stores, with an UpdateLog without
// rows. r.send is held or the reporter is not shared yet.
func (r *reporter) probe(ctx context.Context) error {
	r.mu.Lock()
	idx := r.ack
	r.mu.Unlock()
	ack, err := r.updateLog(ctx, idx, nil, false)
	if err != nil && !archived(err) {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.log.Warn("the task log was archived already", "err", err)
		r.closeLog()
	} else {
		r.applyAck(ack)
	}
	r.probed = true
	return nil
}

// updateLog makes one UpdateLog call and returns the server's ack.
func (r *reporter) updateLog(ctx context.Context, index int64, rows []*runnerv1.LogRow, noMore bool) (int64, error) {
	resp, err := r.cfg.Client.UpdateLog(ctx, connect.NewRequest(&runnerv1.UpdateLogRequest{
		TaskId: r.cfg.TaskID, Index: index, Rows: rows, NoMore: noMore,
	}))
	if err != nil {
		return 0, fmt.Errorf("UpdateLog of task %d from row %d: %w", r.cfg.TaskID, index, err)
	}
	return resp.Msg.GetAckIndex(), nil
}

// applyAck takes the server's ack: rows below it leave the buffer. An ack
// below the buffer means the server lost rows it had acknowledged: they are
// replaced by placeholder rows so that later rows keep their indexes.
// r.mu is held.
func (r *reporter) applyAck(ack int64) {
	switch {
	case ack < r.ack:
		r.log.Error("the server lost log rows it had acknowledged", "ack", ack, "expected", r.ack, "lost", r.ack-ack)
		fill := make([]*runnerv1.LogRow, 0, r.ack-ack+int64(len(r.buf)))
		var t *timestamppb.Timestamp
		if len(r.buf) > 0 {
			t = r.buf[0].Time
		}
		for range r.ack - ack {
			fill = append(fill, &runnerv1.LogRow{Time: t, Content: lostRowContent})
		}
		r.buf = append(fill, r.buf...)
		r.ack = ack
	case ack > r.ack:
		n := min(ack-r.ack, int64(len(r.buf)))
		r.buf = slices.Delete(r.buf, 0, int(n))
		r.ack = ack
	}
}

// nextBatch returns the first rows of the buffer that fit one request and
// whether they are all of it. r.mu is held.
func (r *reporter) nextBatch() (index int64, rows []*runnerv1.LogRow, all bool) {
	size := 0
	n := 0
	for n < len(r.buf) && n < batchRows {
		size += len(r.buf[n].Content) + 16
		if n > 0 && size > batchBytes {
			break
		}
		n++
	}
	return r.ack, slices.Clone(r.buf[:n]), n == len(r.buf)
}

// sendLog sends the buffered rows in batches until the server has them all,
// a call fails, or the server stops making progress. With noMore the last
// request carries no_more and at least one row (an empty sentinel row when
// nothing is pending), because older servers ignore no_more without rows.
// r.send is held.
func (r *reporter) sendLog(ctx context.Context, noMore bool) error {
	if !r.probed {
		if err := r.probe(ctx); err != nil {
			return err
		}
	}
	stalls := 0
	for {
		r.mu.Lock()
		if r.st.LogClosed {
			r.mu.Unlock()
			return nil
		}
		index, rows, all := r.nextBatch()
		last := noMore && all
		if last && len(rows) == 0 {
			// The sentinel is a row like the others: it ends the
			// "Complete job" section.
			t := r.st.StoppedAt
			if t.IsZero() {
				t = r.now()
			}
			idx := r.st.RowCount
			r.addRow(t, "")
			if idx >= r.ack {
				index, rows, _ = r.nextBatch()
			} else {
				// The server is ahead of the rows generated: the
				// sentinel only carries no_more.
				index, rows = idx, []*runnerv1.LogRow{{Time: timestamppb.New(t)}}
			}
		}
		before := r.ack
		r.mu.Unlock()
		if len(rows) == 0 && !last {
			return nil
		}
		ack, err := r.updateLog(ctx, index, rows, last)
		if err != nil {
			// Archived by an earlier no_more whose answer was lost, or
			// by the server ending the task (zombie sweep): no row
			// can be stored any more.
			if archived(err) {
				r.log.Warn("the task log was archived already", "err", err)
				r.mu.Lock()
				r.closeLog()
				r.mu.Unlock()
				return nil
			}
			return err
		}
		r.mu.Lock()
		r.applyAck(ack)
		if last {
			if r.ack < r.st.RowCount {
				r.log.Error("log closed before the server stored every row", "ack", r.ack, "rows", r.st.RowCount)
			}
			r.closeLog()
			r.mu.Unlock()
			return nil
		}
		done := len(r.buf) == 0
		if r.ack <= before {
			stalls++
		} else {
			stalls = 0
		}
		r.mu.Unlock()
		if done && !noMore {
			return nil
		}
		if stalls >= maxLogRounds {
			return fmt.Errorf("UpdateLog of task %d: the server acknowledges row %d, not the %d sent from %d",
				r.cfg.TaskID, ack, len(rows), index)
		}
	}
}

// closeLog records that the log is archived: no row will be sent again, so
// the server's ack covers them all. r.mu is held.
func (r *reporter) closeLog() {
	r.st.LogClosed = true
	r.buf = nil
	r.ack = max(r.ack, r.st.RowCount)
	r.dirty = true
}

// archived reports whether err is the server's refusal of rows for a log
// already archived (a no_more that succeeded before a restart or a lost
// answer). Gitea sends it as an unknown code, hence the text.
func archived(err error) bool {
	return connect.CodeOf(err) == connect.CodeAlreadyExists || strings.Contains(err.Error(), "has been archived")
}

// checkpoint saves the state and releases the held acks if this is a clean
// point: the server has every row generated. r.send is held.
func (r *reporter) checkpoint(ctx context.Context) error {
	r.mu.Lock()
	if (r.ack < r.st.RowCount && !r.st.LogClosed) || (r.st.LastSeq == r.savedSeq && !r.dirty && len(r.held) == 0) {
		r.mu.Unlock()
		return nil
	}
	st := r.st
	st.Acked = r.ack
	st.Steps = slices.Clone(r.st.Steps)
	st.Outputs = maps.Clone(r.st.Outputs)
	changed := st.LastSeq != r.savedSeq || r.dirty
	held := r.held
	r.held = nil
	r.mu.Unlock()
	if changed {
		if err := r.save(ctx, st); err != nil {
			r.mu.Lock()
			r.held = append(held, r.held...)
			r.mu.Unlock()
			return err
		}
	}
	r.mu.Lock()
	r.savedSeq = st.LastSeq
	if r.st.LastSeq == st.LastSeq && r.st.LogClosed == st.LogClosed {
		r.dirty = false
	}
	r.mu.Unlock()
	for _, h := range held {
		h()
	}
	return nil
}

// save writes st to the store.
func (r *reporter) save(ctx context.Context, st reportState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encoding the report of task %d: %w", r.cfg.TaskID, err)
	}
	if err := r.cfg.Store.PutReport(ctx, r.cfg.Key, b); err != nil {
		return fmt.Errorf("saving the report of task %d: %w", r.cfg.TaskID, err)
	}
	return nil
}

// stepStates returns the step states to send. A running step's length counts
// the rows generated so far. r.mu is held.
func (r *reporter) stepStates() []*runnerv1.StepState {
	out := make([]*runnerv1.StepState, len(r.st.Steps))
	for i, s := range r.st.Steps {
		ss := &runnerv1.StepState{Id: int64(i), Result: s.Result, LogIndex: s.LogIndex, LogLength: s.LogLength,
			StartedAt: timestamp(s.StartedAt), StoppedAt: timestamp(s.StoppedAt)}
		if i == r.st.Open {
			ss.LogLength = r.st.RowCount - s.LogIndex
		}
		out[i] = ss
	}
	return out
}

// timestamp is t as a protobuf timestamp, nil for the zero time.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// heartbeat sends UpdateTask with result UNSPECIFIED when the steps changed
// since the last one or heartbeatInterval passed. r.send is held.
func (r *reporter) heartbeat(ctx context.Context) error {
	r.mu.Lock()
	steps := r.stepStates()
	due := r.lastTask.IsZero() || r.now().Sub(r.lastTask) >= heartbeatInterval ||
		r.stepsVersion != r.sentVersion || !sameSteps(steps, r.sentSteps)
	version := r.stepsVersion
	state := &runnerv1.TaskState{Id: r.cfg.TaskID, StartedAt: timestamp(r.st.StartedAt), Steps: steps}
	r.mu.Unlock()
	if !due {
		return nil
	}
	resp, err := r.cfg.Client.UpdateTask(ctx, connect.NewRequest(&runnerv1.UpdateTaskRequest{State: state}))
	if err != nil {
		return fmt.Errorf("UpdateTask of task %d: %w", r.cfg.TaskID, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastTask = r.now()
	r.sentVersion = version
	r.sentSteps = steps
	if res := resp.Msg.GetState().GetResult(); res != runnerv1.Result_RESULT_UNSPECIFIED {
		if r.serverResult == runnerv1.Result_RESULT_UNSPECIFIED {
			r.log.Info("the server ended the task", "result", res)
		}
		r.serverResult = res
	}
	return nil
}

// sameSteps reports whether two lists of step states have the same ranges
// and results.
func sameSteps(a, b []*runnerv1.StepState) bool {
	return slices.EqualFunc(a, b, func(x, y *runnerv1.StepState) bool {
		return x.Result == y.Result && x.LogIndex == y.LogIndex && x.LogLength == y.LogLength
	})
}

// Finish ends the report once the job is over (Done): it closes the log
// with UpdateLog no_more (retried), then sends UpdateTask with the final
// result, stopped_at, the step states and the outputs until the server
// acknowledges every output, then deletes the saved state. Called before
// Done, it ends the task with FAILURE. If the log cannot be closed the task
// result is still sent, the state stays in the store and the error is
// returned: Finish may be called again.
func (r *reporter) Finish(ctx context.Context) error {
	r.mu.Lock()
	if !r.st.Done && !r.finished {
		r.log.Warn("finishing a report before the job ended")
		r.st.Result = runnerv1.Result_RESULT_FAILURE
		r.end(r.now().UTC(), false)
		r.dirty = true
	}
	r.mu.Unlock()
	return r.finish(ctx)
}

// FailNow ends a task that cannot run at all (its payload cannot be
// translated, no orchestrator serves its label): one row with reason, then
// Finish with FAILURE.
func (r *reporter) FailNow(ctx context.Context, reason string) error {
	return r.FinishResult(ctx, runnerv1.Result_RESULT_FAILURE, reason)
}

// FinishResult ends the task with result after a row with reason (none when
// reason is empty), then finishes the report as Finish does.
func (r *reporter) FinishResult(ctx context.Context, result runnerv1.Result, reason string) error {
	r.mu.Lock()
	if !r.finished && !r.st.LogClosed {
		t := r.now().UTC()
		if reason != "" {
			r.addRow(t, reason)
		}
		r.st.Result = result
		r.st.JobResult = true
		r.end(t, !r.st.Done)
		r.dirty = true
	}
	r.mu.Unlock()
	return r.finish(ctx)
}

// finish closes the log, sends the final task state and deletes the saved
// state.
func (r *reporter) finish(ctx context.Context) error {
	r.send.Lock()
	defer r.send.Unlock()
	r.mu.Lock()
	if r.finished {
		r.mu.Unlock()
		return nil
	}
	closed := r.st.LogClosed
	r.mu.Unlock()

	var logErr error
	if !closed {
		logErr = r.retry(ctx, finalLogTries, func() error { return r.sendLog(ctx, true) })
		if logErr != nil {
			logErr = fmt.Errorf("closing the log of task %d: %w", r.cfg.TaskID, logErr)
		} else if err := r.checkpoint(ctx); err != nil {
			// The log is archived; a resume will not send rows again
			// only if this was saved, but the server refuses them
			// anyway (archived).
			r.log.Warn("saving the closed report", "err", err)
		}
	}
	if err := r.sendFinal(ctx); err != nil {
		return errors.Join(logErr, err)
	}
	if logErr != nil {
		return logErr
	}
	if err := r.cfg.Store.DeleteReport(ctx, r.cfg.Key); err != nil {
		return fmt.Errorf("deleting the report of task %d: %w", r.cfg.TaskID, err)
	}
	r.mu.Lock()
	r.finished = true
	held := r.held
	r.held = nil
	r.mu.Unlock()
	// Events applied after the log closed: nothing more will come of them.
	for _, h := range held {
		h()
	}
	return nil
}

// retry calls f up to tries times, waiting r.retryBase, then twice as long
// after each failure.
func (r *reporter) retry(ctx context.Context, tries int, f func() error) error {
	d := r.retryBase
	var err error
	for i := range tries {
		if err = f(); err == nil {
			return nil
		}
		if i == tries-1 {
			break
		}
		r.log.Warn("retrying", "try", i+1, "err", err)
		if serr := r.sleep(ctx, d); serr != nil {
			return errors.Join(err, serr)
		}
		d *= 2
	}
	return err
}

// sendFinal sends UpdateTask with the final result until the server
// acknowledges every output (at most outputTries answers) or the calls fail
// finalTaskTries times.
func (r *reporter) sendFinal(ctx context.Context) error {
	r.mu.Lock()
	state := &runnerv1.TaskState{Id: r.cfg.TaskID, Result: r.st.Result, StartedAt: timestamp(r.st.StartedAt),
		StoppedAt: timestamp(r.st.StoppedAt), Steps: r.stepStates()}
	outputs := maps.Clone(r.st.Outputs)
	r.mu.Unlock()
	answers := 0
	return r.retry(ctx, finalTaskTries, func() error {
		for {
			resp, err := r.cfg.Client.UpdateTask(ctx, connect.NewRequest(&runnerv1.UpdateTaskRequest{State: state, Outputs: outputs}))
			if err != nil {
				return fmt.Errorf("final UpdateTask of task %d: %w", r.cfg.TaskID, err)
			}
			answers++
			var missing []string
			for k := range outputs {
				if !slices.Contains(resp.Msg.GetSentOutputs(), k) {
					missing = append(missing, k)
				}
			}
			if len(missing) == 0 {
				return nil
			}
			if answers >= outputTries {
				slices.Sort(missing)
				r.log.Warn("the server did not store every output", "missing", missing)
				return nil
			}
		}
	})
}

// JobFinished reports whether the job's own result is known: a
// job_finished event (or FinishResult) set it. An error event alone makes
// Done true but is normally followed by job_finished.
func (r *reporter) JobFinished() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.JobResult
}

// Result is the task result as reported (UNSPECIFIED until the job ended).
func (r *reporter) Result() runnerv1.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.Result
}
