package forgejo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/store"
)

// fakeRunner is the server side of UpdateLog and UpdateTask as Forgejo
// implements it: the log is append-only, ack is its length, a request with
// a gap or entirely below the ack writes nothing, an overlapping one appends
// rows[ack-index:], no_more with rows archives the log (older servers ignore
// no_more without rows).
type fakeRunner struct {
	mu sync.Mutex

	rows     []*runnerv1.LogRow
	archived bool
	// calls records the calls in order: "log", "log-no-more", "task",
	// "task-final".
	calls []string
	// noMoreRows is the number of rows of the no_more request.
	noMoreRows int
	// dupRows counts rows received that the server had already.
	dupRows int
	// logIndexes records the index of every UpdateLog request with rows.
	logIndexes []int64

	failLog, failTask int   // fail the next N calls
	lowerAck          int64 // answer an ack this much lower, once
	result            runnerv1.Result
	dropOutputs       int // ignore the outputs of the next N UpdateTask calls

	steps       map[int64]*runnerv1.StepState
	final       *runnerv1.TaskState
	outputs     map[string]string
	taskUpdates int
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{steps: map[int64]*runnerv1.StepState{}, outputs: map[string]string{}}
}

func (f *fakeRunner) UpdateLog(_ context.Context, req *connect.Request[runnerv1.UpdateLogRequest]) (*connect.Response[runnerv1.UpdateLogResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := req.Msg
	if f.failLog > 0 {
		f.failLog--
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("injected UpdateLog failure"))
	}
	if f.archived {
		return nil, connect.NewError(connect.CodeAlreadyExists, errors.New("log file has been archived"))
	}
	name := "log"
	if m.NoMore {
		name = "log-no-more"
		f.noMoreRows = len(m.Rows)
	}
	f.calls = append(f.calls, name)
	ack := int64(len(f.rows))
	if len(m.Rows) > 0 {
		f.logIndexes = append(f.logIndexes, m.Index)
	}
	if len(m.Rows) > 0 && m.Index <= ack {
		f.dupRows += int(min(ack-m.Index, int64(len(m.Rows))))
	}
	if len(m.Rows) > 0 && m.Index <= ack && m.Index+int64(len(m.Rows)) > ack {
		for _, row := range m.Rows[ack-m.Index:] {
			f.rows = append(f.rows, proto.Clone(row).(*runnerv1.LogRow))
		}
	}
	if m.NoMore && len(m.Rows) > 0 {
		f.archived = true
	}
	ack = int64(len(f.rows)) - f.lowerAck
	f.lowerAck = 0
	return connect.NewResponse(&runnerv1.UpdateLogResponse{AckIndex: ack}), nil
}

func (f *fakeRunner) UpdateTask(_ context.Context, req *connect.Request[runnerv1.UpdateTaskRequest]) (*connect.Response[runnerv1.UpdateTaskResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failTask > 0 {
		f.failTask--
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("injected UpdateTask failure"))
	}
	st := req.Msg.State
	if st.Result != runnerv1.Result_RESULT_UNSPECIFIED {
		f.calls = append(f.calls, "task-final")
	} else {
		f.calls = append(f.calls, "task")
	}
	f.taskUpdates++
	if f.final == nil {
		for _, s := range st.Steps {
			f.steps[s.Id] = proto.Clone(s).(*runnerv1.StepState)
		}
		if st.Result != runnerv1.Result_RESULT_UNSPECIFIED {
			f.final = proto.Clone(st).(*runnerv1.TaskState)
		}
	}
	if f.dropOutputs > 0 && len(req.Msg.Outputs) > 0 {
		f.dropOutputs--
	} else {
		for k, v := range req.Msg.Outputs {
			if _, ok := f.outputs[k]; !ok {
				f.outputs[k] = v
			}
		}
	}
	result := f.result
	if f.final != nil {
		result = f.final.Result
	}
	return connect.NewResponse(&runnerv1.UpdateTaskResponse{
		State:       &runnerv1.TaskState{Id: st.Id, Result: result},
		SentOutputs: slices.Sorted(maps.Keys(f.outputs)),
	}), nil
}

// log returns the stored rows as "time|content" lines.
func (f *fakeRunner) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return rowLines(f.rows)
}

func rowLines(rows []*runnerv1.LogRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.GetTime().AsTime().Format(time.RFC3339Nano) + "|" + r.GetContent()
	}
	return out
}

func (f *fakeRunner) set(fn func(f *fakeRunner)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeRunner) stepList(n int) []*runnerv1.StepState {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*runnerv1.StepState, n)
	for i := range n {
		out[i] = f.steps[int64(i)]
	}
	return out
}

// memStore is an in-memory reportStore.
type memStore struct {
	mu      sync.Mutex
	m       map[string][]byte
	failPut int
	puts    int
}

func newMemStore() *memStore { return &memStore{m: map[string][]byte{}} }

func (s *memStore) PutReport(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failPut > 0 {
		s.failPut--
		return errors.New("injected PutReport failure")
	}
	s.puts++
	s.m[key] = slices.Clone(value)
	return nil
}

func (s *memStore) GetReport(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, store.ErrNotFound
	}
	return slices.Clone(v), nil
}

func (s *memStore) DeleteReport(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, key)
	return nil
}

func (s *memStore) has(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[key]
	return ok
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const (
	testTaskID = 42
	testJobID  = "job-1"
	testKey    = "forgejo/runner/42"
	testSteps  = 5
)

var testT0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func newTestReporter(t *testing.T, f *fakeRunner, st *memStore, clock *fakeClock) *reporter {
	t.Helper()
	if clock == nil {
		clock = &fakeClock{t: testT0.Add(-time.Hour)}
	}
	r, err := newReporter(t.Context(), reporterConfig{TaskID: testTaskID, JobID: testJobID, Steps: testSteps,
		Key: testKey, Client: f, Store: st, Now: clock.now})
	if err != nil {
		t.Fatalf("newReporter: %v", err)
	}
	r.sleep = func(context.Context, time.Duration) error { return nil }
	return r
}

// eventList builds events with increasing Seq and times.
type eventList struct {
	evs []jobspec.Event
}

func (l *eventList) add(ev jobspec.Event) {
	ev.Version = jobspec.Version
	ev.JobID = testJobID
	ev.Seq = int64(len(l.evs) + 1)
	ev.Time = testT0.Add(time.Duration(ev.Seq) * time.Second)
	if ev.Kind != jobspec.EventStepStarted && ev.Kind != jobspec.EventStepFinished && ev.Step == 0 {
		ev.Step = jobspec.SetupStep
	}
	l.evs = append(l.evs, ev)
}

func (l *eventList) log(step int, texts ...string) {
	seq := len(l.evs) + 1
	var lines []jobspec.LogLine
	for i, s := range texts {
		lines = append(lines, jobspec.LogLine{Time: testT0.Add(time.Duration(seq)*time.Second + time.Duration(i)*time.Millisecond), Text: s})
	}
	l.add(jobspec.Event{Kind: jobspec.EventLog, Step: step, Lines: lines})
}

// normalJob is a job of testSteps steps: setup rows, three steps with logs,
// a skipped step, a step never started, a row between steps, a summary row
// after the last step and job_finished with outputs.
func normalJob() []jobspec.Event {
	var l eventList
	l.add(jobspec.Event{Kind: jobspec.EventAccepted, Message: "accepted by host1"})
	l.add(jobspec.Event{Kind: jobspec.EventVMBooting, Message: "booting a VM for ubuntu-latest"})
	l.log(jobspec.SetupStep, "Solstice CI: job job-1")
	l.add(jobspec.Event{Kind: jobspec.EventStepStarted, Step: 0, Name: "build"})
	l.log(0, "::group::Run make", "hello", "::endgroup::")
	l.add(jobspec.Event{Kind: jobspec.EventStepFinished, Step: 0, Result: jobspec.ResultSuccess})
	l.add(jobspec.Event{Kind: jobspec.EventStepStarted, Step: 1, Name: "test"})
	l.log(jobspec.SetupStep, "step 1 line") // ev.Step is not what places a row
	l.log(1, "step 1 second")
	l.add(jobspec.Event{Kind: jobspec.EventStepFinished, Step: 1, Result: jobspec.ResultSuccess})
	l.log(jobspec.SetupStep, "between steps")
	l.add(jobspec.Event{Kind: jobspec.EventStepFinished, Step: 2, Result: jobspec.ResultSkipped})
	l.add(jobspec.Event{Kind: jobspec.EventStepStarted, Step: 3, Name: "lint"})
	l.log(3, "step 3 a")
	l.add(jobspec.Event{Kind: jobspec.EventDebugSSH, Message: "ssh -p 2222 runner@host1"})
	l.log(3, "step 3 b")
	l.add(jobspec.Event{Kind: jobspec.EventStepFinished, Step: 3, Result: jobspec.ResultFailure, ExitCode: 1})
	l.log(jobspec.SetupStep, "job summary:", "all good")
	l.add(jobspec.Event{Kind: jobspec.EventJobFinished, Result: jobspec.ResultSuccess,
		Outputs: map[string]string{"a": "1", "b": "two"}})
	return l.evs
}

func ts(seq int64, ms int) string {
	return testT0.Add(time.Duration(seq)*time.Second + time.Duration(ms)*time.Millisecond).Format(time.RFC3339Nano)
}

// normalJobEvents is the number of events of normalJob, lastRowEvent the
// index of its last event with rows.
const (
	normalJobEvents = 19
	lastRowEvent    = 17
)

// wantLog is the task log of normalJob, with the empty sentinel row that
// closes a log when no row is pending at Finish.
func wantLog(sentinel bool) []string {
	if sentinel {
		return append(slices.Clone(normalLog), ts(19, 0)+"|")
	}
	return normalLog
}

// normalLog is the task log of normalJob.
var normalLog = []string{
	ts(1, 0) + "|Job accepted by orchestrator: accepted by host1",
	ts(2, 0) + "|Booting VM: booting a VM for ubuntu-latest",
	ts(3, 0) + "|Solstice CI: job job-1",
	ts(5, 0) + "|##[group]Run make", // step 0: rows 3-5
	ts(5, 1) + "|hello",
	ts(5, 2) + "|##[endgroup]",
	ts(8, 0) + "|step 1 line", // step 1: rows 6-7
	ts(9, 0) + "|step 1 second",
	ts(11, 0) + "|between steps", // row 8: no step
	ts(14, 0) + "|step 3 a",      // step 3: rows 9-11
	ts(15, 0) + "|ssh -p 2222 runner@host1",
	ts(16, 0) + "|step 3 b",
	ts(18, 0) + "|job summary:", // complete job: rows 12-13
	ts(18, 1) + "|all good",
}

type wantStep struct {
	result        runnerv1.Result
	index, length int64
	start, stop   int64 // event seq of the times, 0 for none
}

var normalSteps = []wantStep{
	{runnerv1.Result_RESULT_SUCCESS, 3, 3, 4, 6},
	{runnerv1.Result_RESULT_SUCCESS, 6, 2, 7, 10},
	{runnerv1.Result_RESULT_SKIPPED, 9, 0, 12, 12},
	{runnerv1.Result_RESULT_FAILURE, 9, 3, 13, 17},
	{runnerv1.Result_RESULT_SKIPPED, 14, 0, 0, 0},
}

// checkSteps compares the final step states with want and checks that the
// ranges are in order and do not overlap.
func checkSteps(t *testing.T, steps []*runnerv1.StepState, want []wantStep) {
	t.Helper()
	if len(steps) != len(want) {
		t.Fatalf("%d steps, want %d", len(steps), len(want))
	}
	for i, s := range steps {
		if s == nil {
			t.Errorf("step %d: never reported", i)
			continue
		}
		if s.Id != int64(i) {
			t.Errorf("step %d: id %d", i, s.Id)
		}
		w := want[i]
		if s.Result != w.result || s.LogIndex != w.index || s.LogLength != w.length {
			t.Errorf("step %d: result %v, rows %d+%d; want %v, %d+%d", i, s.Result, s.LogIndex, s.LogLength, w.result, w.index, w.length)
		}
		if got, want := tsSeq(s.StartedAt.AsTime(), s.StartedAt != nil), w.start; got != want {
			t.Errorf("step %d: started_at at seq %d, want %d", i, got, want)
		}
		if got, want := tsSeq(s.StoppedAt.AsTime(), s.StoppedAt != nil), w.stop; got != want {
			t.Errorf("step %d: stopped_at at seq %d, want %d", i, got, want)
		}
		if i > 0 {
			p := steps[i-1]
			if p != nil && s.LogIndex < p.LogIndex+p.LogLength {
				t.Errorf("step %d starts at row %d, inside step %d (%d+%d)", i, s.LogIndex, i-1, p.LogIndex, p.LogLength)
			}
		}
	}
}

// tsSeq turns an event time back into its seq, 0 when unset.
func tsSeq(t time.Time, set bool) int64 {
	if !set {
		return 0
	}
	return int64(t.Sub(testT0) / time.Second)
}

// acks counts the ack calls per delivery.
type acks struct {
	mu sync.Mutex
	n  map[string]int
}

func newAcks() *acks { return &acks{n: map[string]int{}} }

func (a *acks) fn(name string) func() {
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.n[name]++
	}
}

func (a *acks) count(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[name]
}

func deliveryName(ev jobspec.Event, attempt int) string {
	return fmt.Sprintf("%d/%d", ev.Seq, attempt)
}

// checkFinished checks what every finished normalJob report shows.
func checkFinished(t *testing.T, f *fakeRunner, st *memStore, sentinel bool) {
	t.Helper()
	if got, want := f.log(), wantLog(sentinel); !slices.Equal(got, want) {
		t.Errorf("task log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	f.mu.Lock()
	final := proto.Clone(f.final).(*runnerv1.TaskState)
	calls := slices.Clone(f.calls)
	noMoreRows := f.noMoreRows
	outputs := maps.Clone(f.outputs)
	archived := f.archived
	f.mu.Unlock()
	if final == nil || final.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("final state %v, want result SUCCESS", final)
	}
	if got := tsSeq(final.StoppedAt.AsTime(), final.StoppedAt != nil); got != 19 {
		t.Errorf("stopped_at at seq %d, want 19", got)
	}
	checkSteps(t, final.Steps, normalSteps)
	if want := map[string]string{"a": "1", "b": "two"}; !maps.Equal(outputs, want) {
		t.Errorf("outputs %v, want %v", outputs, want)
	}
	noMore := slices.Index(calls, "log-no-more")
	fin := slices.Index(calls, "task-final")
	if noMore < 0 || fin < noMore || !archived {
		t.Errorf("calls %v: want the no_more UpdateLog before the final UpdateTask", calls)
	}
	if noMoreRows < 1 {
		t.Errorf("the no_more UpdateLog carried %d rows", noMoreRows)
	}
	if st.has(testKey) {
		t.Errorf("the report is still in the store")
	}
}

// run adds evs, flushing after every flushEvery events (never when 0), then
// finishes.
func run(t *testing.T, r *reporter, evs []jobspec.Event, flushEvery int, a *acks) {
	t.Helper()
	for i, ev := range evs {
		r.Add(ev, a.fn(deliveryName(ev, 0)))
		if flushEvery > 0 && (i+1)%flushEvery == 0 {
			if _, err := r.Flush(t.Context()); err != nil {
				t.Fatalf("Flush after seq %d: %v", ev.Seq, err)
			}
		}
	}
	if !r.Done() {
		t.Fatal("not Done after job_finished")
	}
	if err := r.Finish(t.Context()); err != nil {
		t.Fatalf("Finish: %v", err)
	}
}

func TestReporterNormalJob(t *testing.T) {
	tests := []struct {
		flushEvery int
		sentinel   bool // every row was flushed before Finish
	}{{0, false}, {1, true}, {3, true}, {7, false}}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("flush every %d", tt.flushEvery), func(t *testing.T) {
			f, st, a := newFakeRunner(), newMemStore(), newAcks()
			r := newTestReporter(t, f, st, nil)
			evs := normalJob()
			if len(evs) != normalJobEvents {
				t.Fatalf("%d events", len(evs))
			}
			run(t, r, evs, tt.flushEvery, a)
			checkFinished(t, f, st, tt.sentinel)
			for _, ev := range evs {
				if n := a.count(deliveryName(ev, 0)); n != 1 {
					t.Errorf("delivery of seq %d acked %d times", ev.Seq, n)
				}
			}
			if f.dupRows != 0 {
				t.Errorf("%d rows sent twice", f.dupRows)
			}
		})
	}
}

func TestReporterRunningStepStates(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	for _, ev := range evs[:5] { // up to step 0's log
		r.Add(ev, nil)
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	s := f.stepList(testSteps)
	if s[0] == nil || s[0].Result != runnerv1.Result_RESULT_UNSPECIFIED || s[0].StartedAt == nil ||
		s[0].LogIndex != 3 || s[0].LogLength != 3 {
		t.Errorf("running step 0: %v, want started, unspecified, rows 3+3", s[0])
	}
	if s[1] == nil || s[1].StartedAt != nil || s[1].Result != runnerv1.Result_RESULT_UNSPECIFIED {
		t.Errorf("waiting step 1: %v", s[1])
	}
}

func TestReporterDuplicates(t *testing.T) {
	f, st, a := newFakeRunner(), newMemStore(), newAcks()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	for i, ev := range evs {
		r.Add(ev, a.fn(deliveryName(ev, 0)))
		if i%2 == 0 {
			// A duplicate before its clean point.
			r.Add(ev, a.fn(deliveryName(ev, 1)))
		}
		if i%4 == 3 {
			if _, err := r.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
			// A duplicate of a saved event: acked at once.
			r.Add(evs[i-1], a.fn(deliveryName(evs[i-1], 2)))
			if n := a.count(deliveryName(evs[i-1], 2)); n != 1 {
				t.Errorf("duplicate of saved seq %d acked %d times at once", evs[i-1].Seq, n)
			}
		}
	}
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkFinished(t, f, st, false)
	for i, ev := range evs {
		if n := a.count(deliveryName(ev, 0)); n != 1 {
			t.Errorf("delivery of seq %d acked %d times", ev.Seq, n)
		}
		if n := a.count(deliveryName(ev, 1)); i%2 == 0 && n != 1 {
			t.Errorf("duplicate delivery of seq %d acked %d times", ev.Seq, n)
		}
	}
}

func TestReporterServerFailure(t *testing.T) {
	tests := []struct {
		name   string
		at     int // inject after this many events
		inject func(f *fakeRunner)
	}{
		{"UpdateLog fails twice", 5, func(f *fakeRunner) { f.failLog = 2 }},
		{"UpdateTask fails", 4, func(f *fakeRunner) { f.failTask = 1 }},
		{"lower ack", 5, func(f *fakeRunner) { f.lowerAck = 2 }},
		{"both fail three times", 9, func(f *fakeRunner) { f.failLog, f.failTask = 3, 3 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, st, a := newFakeRunner(), newMemStore(), newAcks()
			r := newTestReporter(t, f, st, nil)
			evs := normalJob()
			errs := 0
			for i, ev := range evs {
				if i == tt.at {
					f.set(tt.inject)
				}
				r.Add(ev, a.fn(deliveryName(ev, 0)))
				if _, err := r.Flush(t.Context()); err != nil {
					errs++
				}
			}
			if err := r.Finish(t.Context()); err != nil {
				t.Fatal(err)
			}
			checkFinished(t, f, st, true)
			if tt.name != "lower ack" && errs == 0 {
				t.Error("no Flush failed")
			}
			if tt.name != "lower ack" && f.dupRows != 0 {
				t.Errorf("%d rows sent twice", f.dupRows)
			}
			for _, ev := range evs {
				if n := a.count(deliveryName(ev, 0)); n != 1 {
					t.Errorf("delivery of seq %d acked %d times", ev.Seq, n)
				}
			}
		})
	}
}

func TestReporterAcksAfterServerAck(t *testing.T) {
	f, st, a := newFakeRunner(), newMemStore(), newAcks()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	for _, ev := range evs[:3] {
		r.Add(ev, a.fn(deliveryName(ev, 0)))
	}
	acked := func() int {
		n := 0
		for _, ev := range evs[:3] {
			n += a.count(deliveryName(ev, 0))
		}
		return n
	}
	if rows, held := r.Pending(); rows != 3 || held != 3 {
		t.Errorf("Pending() = %d, %d; want 3, 3", rows, held)
	}
	f.set(func(f *fakeRunner) { f.failLog = 1 })
	if _, err := r.Flush(t.Context()); err == nil {
		t.Error("Flush succeeded with a failing server")
	}
	if n := acked(); n != 0 {
		t.Errorf("%d acks called before the server stored the rows", n)
	}
	// The server answers one row less than it has: not a clean point yet
	// after one call, but the resend brings the right ack.
	f.set(func(f *fakeRunner) { f.lowerAck = 1 })
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := acked(); n != 3 {
		t.Errorf("%d acks called after the server acknowledged every row, want 3", n)
	}
	// The store failing: no ack.
	r.Add(evs[3], a.fn(deliveryName(evs[3], 0)))
	st.failPut = 1
	if _, err := r.Flush(t.Context()); err == nil {
		t.Error("Flush succeeded with a failing store")
	}
	if n := a.count(deliveryName(evs[3], 0)); n != 0 {
		t.Error("ack called though the state was not saved")
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := a.count(deliveryName(evs[3], 0)); n != 1 {
		t.Errorf("ack called %d times after the state was saved", n)
	}
	if rows, held := r.Pending(); rows != 0 || held != 0 {
		t.Errorf("Pending() = %d, %d; want 0, 0", rows, held)
	}
}

func TestReporterRestart(t *testing.T) {
	tests := []struct {
		name string
		// k1 events are flushed, then k2-k1 added and not flushed (or
		// flushed with a failing store) before the crash.
		k1, k2 int
		// serverAhead: the dead reporter's last Flush stored rows on
		// the server but could not save its state.
		serverAhead bool
		// probeFails: the resume's first UpdateLog fails.
		probeFails bool
	}{
		{name: "unflushed events", k1: 6, k2: 9},
		{name: "server ahead", k1: 6, k2: 12, serverAhead: true},
		{name: "server ahead, probe fails", k1: 3, k2: 16, serverAhead: true, probeFails: true},
		{name: "crash before any flush", k1: 0, k2: 5},
		{name: "crash after job_finished", k1: 10, k2: normalJobEvents, serverAhead: true},
		{name: "crash before Finish", k1: normalJobEvents, k2: normalJobEvents},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, st := newFakeRunner(), newMemStore()
			evs := normalJob()
			a := newAcks()
			r1 := newTestReporter(t, f, st, nil)
			for _, ev := range evs[:tt.k1] {
				r1.Add(ev, a.fn(deliveryName(ev, 0)))
			}
			if _, err := r1.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs[tt.k1:tt.k2] {
				r1.Add(ev, a.fn(deliveryName(ev, 0)))
			}
			if tt.serverAhead {
				st.failPut = 1
				if _, err := r1.Flush(t.Context()); err == nil {
					t.Fatal("Flush succeeded with a failing store")
				}
				if got := len(f.log()); got == 0 {
					t.Fatal("the server stored nothing")
				}
			}
			for _, ev := range evs[tt.k1:tt.k2] {
				if n := a.count(deliveryName(ev, 0)); n != 0 {
					t.Fatalf("delivery of seq %d acked before a clean point", ev.Seq)
				}
			}
			// r1 dies. The broker redelivers every unacked delivery.
			if tt.probeFails {
				f.set(func(f *fakeRunner) { f.failLog = 1 })
			}
			r2 := newTestReporter(t, f, st, nil)
			f.set(func(f *fakeRunner) { f.dupRows = 0 })
			for i, ev := range evs[tt.k1:] {
				r2.Add(ev, a.fn(deliveryName(ev, 1)))
				if i%4 == 3 {
					if _, err := r2.Flush(t.Context()); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := r2.Finish(t.Context()); err != nil {
				t.Fatal(err)
			}
			// As the uninterrupted run flushing at the same points: the
			// sentinel closes the log if the last rows were stored
			// before Finish.
			lastStored := tt.k1 - 1
			if tt.serverAhead {
				lastStored = tt.k2 - 1
			}
			for i := range evs[tt.k1:] {
				if i%4 == 3 {
					lastStored = max(lastStored, tt.k1+i)
				}
			}
			sentinel := lastStored >= lastRowEvent
			checkFinished(t, f, st, sentinel)
			if !tt.probeFails && f.dupRows != 0 {
				t.Errorf("%d rows the server had were sent again", f.dupRows)
			}
			for _, ev := range evs {
				want0 := 0
				if int(ev.Seq) <= tt.k1 {
					want0 = 1
				}
				if n := a.count(deliveryName(ev, 0)); n != want0 {
					t.Errorf("first delivery of seq %d acked %d times, want %d", ev.Seq, n, want0)
				}
				if int(ev.Seq) > tt.k1 {
					if n := a.count(deliveryName(ev, 1)); n != 1 {
						t.Errorf("redelivery of seq %d acked %d times", ev.Seq, n)
					}
				}
			}
		})
	}
}

// TestReporterRestartAfterLogClosed resumes a report whose log was archived
// before the daemon died: Finish only sends the result.
func TestReporterRestartAfterLogClosed(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	evs := normalJob()
	r1 := newTestReporter(t, f, st, nil)
	for _, ev := range evs {
		r1.Add(ev, nil)
	}
	f.set(func(f *fakeRunner) { f.failTask = finalTaskTries })
	if err := r1.Finish(t.Context()); err == nil {
		t.Fatal("Finish succeeded though UpdateTask failed")
	}
	r2 := newTestReporter(t, f, st, nil)
	if !r2.Done() {
		t.Fatal("resumed report not Done")
	}
	if err := r2.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkFinished(t, f, st, false)
}

func TestReporterSentinelRow(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	for _, ev := range evs {
		r.Add(ev, nil)
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, want := f.log(), wantLog(true)
	if !slices.Equal(got, want) {
		t.Errorf("task log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if f.noMoreRows != 1 || !f.archived {
		t.Errorf("no_more carried %d rows, archived %v; want the sentinel row", f.noMoreRows, f.archived)
	}
}

func TestReporterFinishRetries(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	var waits []time.Duration
	r.sleep = func(_ context.Context, d time.Duration) error {
		waits = append(waits, d)
		return nil
	}
	for _, ev := range normalJob() {
		r.Add(ev, nil)
	}
	f.set(func(f *fakeRunner) { f.failLog, f.failTask, f.dropOutputs = 3, 2, 2 })
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkFinished(t, f, st, false)
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
		100 * time.Millisecond, 200 * time.Millisecond}
	if !slices.Equal(waits, want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	if n := strings.Count(strings.Join(f.calls, ","), "task-final"); n != 3 {
		t.Errorf("%d final UpdateTask answers, want 3 (outputs dropped twice)", n)
	}
}

func TestReporterFinishGivesUp(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	for _, ev := range normalJob() {
		r.Add(ev, nil)
	}
	f.set(func(f *fakeRunner) { f.failLog = finalLogTries })
	if err := r.Finish(t.Context()); err == nil {
		t.Fatal("Finish succeeded though the log could not be closed")
	}
	if !st.has(testKey) {
		t.Error("the report was deleted though the log is not closed")
	}
	// The result went out anyway, so the task is no zombie; a second
	// Finish closes the log.
	if f.final == nil {
		t.Error("no final UpdateTask")
	}
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.log(); !slices.Equal(got, normalLog) {
		t.Errorf("task log:\n%s", strings.Join(got, "\n"))
	}
	if st.has(testKey) {
		t.Error("the report is still in the store")
	}
}

func TestReporterCancel(t *testing.T) {
	for _, res := range []runnerv1.Result{runnerv1.Result_RESULT_CANCELLED, runnerv1.Result_RESULT_FAILURE} {
		t.Run(res.String(), func(t *testing.T) {
			f, st := newFakeRunner(), newMemStore()
			r := newTestReporter(t, f, st, nil)
			evs := normalJob()
			for _, ev := range evs[:5] {
				r.Add(ev, nil)
			}
			got, err := r.Flush(t.Context())
			if err != nil || got != runnerv1.Result_RESULT_UNSPECIFIED {
				t.Fatalf("Flush = %v, %v; want UNSPECIFIED", got, err)
			}
			f.set(func(f *fakeRunner) { f.result = res })
			r.Add(evs[5], nil) // step_finished: a step change
			if got, err := r.Flush(t.Context()); err != nil || got != res {
				t.Fatalf("Flush = %v, %v; want %v", got, err, res)
			}
			// The job is cancelled: the orchestrator reports it.
			r.Add(jobspec.Event{JobID: testJobID, Seq: 100, Kind: jobspec.EventError, Step: jobspec.SetupStep,
				Time: testT0.Add(100 * time.Second), Message: "cancelled: the server cancelled the task"}, nil)
			r.Add(jobspec.Event{JobID: testJobID, Seq: 101, Kind: jobspec.EventJobFinished, Step: jobspec.SetupStep,
				Time: testT0.Add(101 * time.Second), Result: jobspec.ResultCancelled,
				Message: "cancelled: the server cancelled the task"}, nil)
			if !r.Done() {
				t.Fatal("not Done")
			}
			if err := r.Finish(t.Context()); err != nil {
				t.Fatal(err)
			}
			logs := f.log()
			if last := logs[len(logs)-1]; !strings.HasSuffix(last, "|Error: cancelled: the server cancelled the task") {
				t.Errorf("last row %q", last)
			}
			if f.final.Result != runnerv1.Result_RESULT_CANCELLED {
				t.Errorf("final result %v", f.final.Result)
			}
			for i, s := range f.final.Steps {
				want := runnerv1.Result_RESULT_SKIPPED
				if i == 0 {
					want = runnerv1.Result_RESULT_SUCCESS
				}
				if s.Result != want {
					t.Errorf("step %d: %v, want %v", i, s.Result, want)
				}
			}
		})
	}
}

func TestReporterCancelledWhileStepRuns(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	for _, ev := range evs[:8] { // step 1 runs
		r.Add(ev, nil)
	}
	r.Add(jobspec.Event{JobID: testJobID, Seq: 50, Kind: jobspec.EventJobFinished, Step: jobspec.SetupStep,
		Time: testT0.Add(50 * time.Second), Result: jobspec.ResultCancelled, Message: "cancelled by the user"}, nil)
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []wantStep{
		{runnerv1.Result_RESULT_SUCCESS, 3, 3, 4, 6},
		{runnerv1.Result_RESULT_CANCELLED, 6, 1, 7, 50},
		{runnerv1.Result_RESULT_SKIPPED, 7, 0, 0, 0},
		{runnerv1.Result_RESULT_SKIPPED, 7, 0, 0, 0},
		{runnerv1.Result_RESULT_SKIPPED, 7, 0, 0, 0},
	}
	checkSteps(t, f.final.Steps, want)
	if logs := f.log(); len(logs) != 8 || !strings.HasSuffix(logs[7], "|cancelled by the user") {
		t.Errorf("log %q", logs)
	}
}

func TestReporterHeartbeat(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	clock := &fakeClock{t: testT0}
	r := newTestReporter(t, f, st, clock)
	evs := normalJob()
	taskCalls := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.taskUpdates
	}
	flush := func() {
		t.Helper()
		if _, err := r.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	r.Add(evs[0], nil)
	flush()
	if n := taskCalls(); n != 1 {
		t.Fatalf("%d UpdateTask after the first Flush, want 1", n)
	}
	r.Add(evs[1], nil)
	flush()
	clock.advance(time.Second)
	flush()
	if n := taskCalls(); n != 1 {
		t.Errorf("%d UpdateTask within 1 s without step changes, want 1", n)
	}
	clock.advance(time.Second)
	flush()
	if n := taskCalls(); n != 2 {
		t.Errorf("%d UpdateTask after 2 s, want 2", n)
	}
	r.Add(evs[2], nil)
	r.Add(evs[3], nil) // step_started
	flush()
	if n := taskCalls(); n != 3 {
		t.Errorf("%d UpdateTask after a step started, want 3", n)
	}
	// The log failing does not stop the heartbeat.
	clock.advance(3 * time.Second)
	r.Add(evs[4], nil)
	f.set(func(f *fakeRunner) { f.failLog = 1 })
	if _, err := r.Flush(t.Context()); err == nil {
		t.Error("Flush succeeded with a failing UpdateLog")
	}
	if n := taskCalls(); n != 4 {
		t.Errorf("%d UpdateTask after 3 s with UpdateLog failing, want 4", n)
	}
}

func TestReporterFailNow(t *testing.T) {
	tests := []struct {
		name   string
		result runnerv1.Result
		reason string
		want   []string
	}{
		{"failure", runnerv1.Result_RESULT_FAILURE, "no orchestrator serves the label gpu",
			[]string{"|no orchestrator serves the label gpu"}},
		{"skipped without reason", runnerv1.Result_RESULT_SKIPPED, "", []string{"|"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, st := newFakeRunner(), newMemStore()
			clock := &fakeClock{t: testT0}
			r := newTestReporter(t, f, st, clock)
			var err error
			if tt.result == runnerv1.Result_RESULT_FAILURE {
				err = r.FailNow(t.Context(), tt.reason)
			} else {
				err = r.FinishResult(t.Context(), tt.result, tt.reason)
			}
			if err != nil {
				t.Fatal(err)
			}
			want := make([]string, len(tt.want))
			for i, w := range tt.want {
				want[i] = testT0.Format(time.RFC3339Nano) + w
			}
			if got := f.log(); !slices.Equal(got, want) {
				t.Errorf("log %q, want %q", got, want)
			}
			if f.final == nil || f.final.Result != tt.result {
				t.Fatalf("final state %v, want %v", f.final, tt.result)
			}
			for i, s := range f.final.Steps {
				if s.Result != runnerv1.Result_RESULT_SKIPPED || s.LogLength != 0 {
					t.Errorf("step %d: %v", i, s)
				}
			}
			if !f.archived || st.has(testKey) {
				t.Errorf("archived %v, report kept %v", f.archived, st.has(testKey))
			}
		})
	}
}

func TestReporterLostRows(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	for _, ev := range evs[:5] {
		r.Add(ev, nil)
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The server loses its last two rows.
	f.set(func(f *fakeRunner) { f.rows = f.rows[:len(f.rows)-2] })
	for _, ev := range evs[5:] {
		r.Add(ev, nil)
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, want := f.log(), wantLog(true)
	if len(got) != len(want) {
		t.Fatalf("log of %d rows, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range got {
		lost := i == 4 || i == 5
		if lost != strings.HasSuffix(got[i], "|"+lostRowContent) || (!lost && got[i] != want[i]) {
			t.Errorf("row %d: %q", i, got[i])
		}
	}
	checkSteps(t, f.final.Steps, normalSteps)
}

func TestReporterOutOfRangeStep(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	var l eventList
	l.add(jobspec.Event{Kind: jobspec.EventStepStarted, Step: 0})
	l.add(jobspec.Event{Kind: jobspec.EventStepStarted, Step: 7}) // ignored
	l.log(7, "in step 0")
	l.add(jobspec.Event{Kind: jobspec.EventStepFinished, Step: 7, Result: jobspec.ResultSuccess}) // ignored
	l.add(jobspec.Event{Kind: jobspec.EventStepFinished, Step: 0, Result: jobspec.ResultSuccess})
	l.add(jobspec.Event{Kind: jobspec.EventStepStarted, Step: 0}) // out of order: ignored
	l.add(jobspec.Event{Kind: jobspec.EventStepStarted, Step: 2}) // step 1 passed over
	l.log(2, "in step 2")
	l.add(jobspec.Event{Kind: jobspec.EventStepFinished, Step: 2, Result: jobspec.ResultSuccess})
	l.add(jobspec.Event{Kind: jobspec.EventJobFinished, Result: jobspec.ResultSuccess})
	for _, ev := range l.evs {
		r.Add(ev, nil)
	}
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []wantStep{
		{runnerv1.Result_RESULT_SUCCESS, 0, 1, 1, 5},
		{runnerv1.Result_RESULT_SKIPPED, 1, 0, 0, 0},
		{runnerv1.Result_RESULT_SUCCESS, 1, 1, 7, 9},
		{runnerv1.Result_RESULT_SKIPPED, 2, 0, 0, 0},
		{runnerv1.Result_RESULT_SKIPPED, 2, 0, 0, 0},
	}
	checkSteps(t, f.final.Steps, want)
}

func TestReporterConcurrentAddFlush(t *testing.T) {
	f, st, a := newFakeRunner(), newMemStore(), newAcks()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := r.Flush(t.Context()); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for _, ev := range evs {
		r.Add(ev, a.fn(deliveryName(ev, 0)))
		if r.NeedsFlush() {
			t.Error("NeedsFlush with a short backlog")
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	sentinel := f.noMoreRows == 1 && f.rows[len(f.rows)-1].Content == ""
	f.mu.Unlock()
	checkFinished(t, f, st, sentinel)
	for _, ev := range evs {
		if n := a.count(deliveryName(ev, 0)); n != 1 {
			t.Errorf("delivery of seq %d acked %d times", ev.Seq, n)
		}
	}
}

func TestReporterBacklog(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	lines := make([]jobspec.LogLine, maxPendingRows+1)
	for i := range lines {
		lines[i] = jobspec.LogLine{Time: testT0, Text: fmt.Sprint("line ", i)}
	}
	r.Add(jobspec.Event{JobID: testJobID, Seq: 1, Kind: jobspec.EventLog, Step: jobspec.SetupStep, Time: testT0, Lines: lines}, nil)
	if !r.NeedsFlush() {
		t.Fatal("NeedsFlush false with more than maxPendingRows rows")
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if rows, _ := r.Pending(); rows != 0 || r.NeedsFlush() {
		t.Errorf("%d rows pending after Flush", rows)
	}
	if got := len(f.log()); got != len(lines) {
		t.Errorf("server has %d rows, want %d", got, len(lines))
	}
	if n := len(f.logIndexes); n != 5 {
		t.Errorf("%d UpdateLog requests with rows, want 5 batches of at most %d", n, batchRows)
	}
}

// TestReporterRestartAfterArchived resumes a report whose log the server
// archived though the dead reporter could not save that: the server's
// refusal of rows closes the log, redelivered events still give the result.
func TestReporterRestartAfterArchived(t *testing.T) {
	f, st, a := newFakeRunner(), newMemStore(), newAcks()
	evs := normalJob()
	r1 := newTestReporter(t, f, st, nil)
	for _, ev := range evs {
		r1.Add(ev, a.fn(deliveryName(ev, 0)))
	}
	st.failPut = 1
	f.set(func(f *fakeRunner) { f.failTask = finalTaskTries })
	if err := r1.Finish(t.Context()); err == nil {
		t.Fatal("Finish succeeded though UpdateTask failed")
	}
	if !f.archived {
		t.Fatal("log not archived")
	}
	r2 := newTestReporter(t, f, st, nil)
	for _, ev := range evs {
		r2.Add(ev, a.fn(deliveryName(ev, 1)))
	}
	if !r2.Done() {
		t.Fatal("not Done after the redelivered job_finished")
	}
	if _, err := r2.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r2.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkFinished(t, f, st, false)
	for _, ev := range evs {
		if n := a.count(deliveryName(ev, 1)); n != 1 {
			t.Errorf("redelivery of seq %d acked %d times", ev.Seq, n)
		}
	}
}

// TestReporterArchivedByServer keeps going when the server archived the log
// on its own (a zombie sweep): Flush stops sending rows, Finish sends the
// result.
func TestReporterArchivedByServer(t *testing.T) {
	f, st := newFakeRunner(), newMemStore()
	r := newTestReporter(t, f, st, nil)
	evs := normalJob()
	for _, ev := range evs[:5] {
		r.Add(ev, nil)
	}
	if _, err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeRunner) { f.archived, f.result = true, runnerv1.Result_RESULT_FAILURE })
	for _, ev := range evs[5:] {
		r.Add(ev, nil)
	}
	if res, err := r.Flush(t.Context()); err != nil || res != runnerv1.Result_RESULT_FAILURE {
		t.Fatalf("Flush = %v, %v; want FAILURE, nil", res, err)
	}
	if rows, acks := r.Pending(); rows != 0 || acks != 0 {
		t.Errorf("Pending() = %d, %d after the log was archived", rows, acks)
	}
	if err := r.Finish(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.log(); !slices.Equal(got, normalLog[:6]) {
		t.Errorf("log %q", got)
	}
	if st.has(testKey) {
		t.Error("report kept")
	}
}
