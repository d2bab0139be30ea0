package orchestrator

import (
	"bufio"
	"context"

	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	gojson "github.com/goccy/go-json"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/jobspec"
)

const (
	seqBlock      = 100       // sequence numbers reserved in the store at a time
	maxBatchBytes = 256 << 10 // a log event carries at most about this much text
	maxAgentLine  = 4 << 20   // longest event line accepted from the agent
)

// emitter publishes the events of one job in order: it numbers them with
// sequence numbers reserved in the store, and batches log lines of one step
// for at most LogFlushInterval or maxBatchBytes.
type emitter struct {
	o     *Orchestrator
	req   *jobspec.JobRequest
	route string

	mu         sync.Mutex
	next, end  int64
	batch      []jobspec.LogLine
	batchStep  int
	batchBytes int
	batchAt    time.Time
}

func newEmitter(o *Orchestrator, req *jobspec.JobRequest) *emitter {
	return &emitter{o: o, req: req, route: req.Source.Instance}
}

// emit publishes ev after any batched lines. It retries until the queue
// takes it or ctx ends: events are not dropped while the broker recovers.
func (e *emitter) emit(ctx context.Context, ev jobspec.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.flushLocked(ctx); err != nil {
		return err
	}
	return e.publishLocked(ctx, ev)
}

// line adds a log line to the batch, flushing first when the step changes
// or the batch is full.
func (e *emitter) line(ctx context.Context, step int, l jobspec.LogLine) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.batch) > 0 && step != e.batchStep {
		if err := e.flushLocked(ctx); err != nil {
			return err
		}
	}
	if len(e.batch) == 0 {
		e.batchStep = step
		e.batchAt = time.Now()
	}
	e.batch = append(e.batch, l)
	e.batchBytes += len(l.Text) + 64
	e.o.met.LogLines.Inc()
	if e.batchBytes >= maxBatchBytes {
		return e.flushLocked(ctx)
	}
	return nil
}

// flushDue publishes the batch if its first line waited long enough, and
// says how long until the next check is due.
func (e *emitter) flushDue(ctx context.Context) (time.Duration, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	interval := e.o.cfg.LogFlushInterval
	if len(e.batch) == 0 {
		return interval, nil
	}
	if wait := interval - time.Since(e.batchAt); wait > 0 {
		return wait, nil
	}
	return interval, e.flushLocked(ctx)
}

func (e *emitter) flush(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.flushLocked(ctx)
}

func (e *emitter) flushLocked(ctx context.Context) error {
	if len(e.batch) == 0 {
		return nil
	}
	ev := jobspec.Event{Kind: jobspec.EventLog, Step: e.batchStep, Lines: e.batch}
	e.batch, e.batchBytes = nil, 0
	return e.publishLocked(ctx, ev)
}

func (e *emitter) publishLocked(ctx context.Context, ev jobspec.Event) error {
	if e.next == e.end {
		first, err := e.o.deps.Store.ReserveSeq(ctx, e.req.JobID, seqBlock)
		if err != nil {
			return fmt.Errorf("reserving event numbers: %w", err)
		}
		e.next, e.end = first, first+seqBlock
	}
	ev.Version = jobspec.Version
	ev.JobID = e.req.JobID
	ev.Seq = e.next
	e.next++
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	body, err := jobspec.Marshal(&ev)
	if err != nil {
		return fmt.Errorf("encoding event: %w", err)
	}
	retry := newBackoff(100*time.Millisecond, 10*time.Second)
	for {
		err := e.o.deps.Queue.PublishEvent(ctx, e.route, body)
		if err == nil {
			e.o.met.EventsPublished.Inc()
			return nil
		}
		e.o.log.Warn("publishing event; retrying", "job_id", e.req.JobID, "kind", ev.Kind, "err", err)
		if !sleepCtx(ctx, retry.next()) {
			return fmt.Errorf("publishing %s event of job %s: %w", ev.Kind, e.req.JobID, err)
		}
	}
}

// systemWriter returns a writer whose lines become system log lines of the
// setup step (image pulls, boot messages).
func (e *emitter) systemWriter(ctx context.Context) io.Writer {
	return &lineWriter{fn: func(s string) {
		_ = e.line(ctx, jobspec.SetupStep, jobspec.LogLine{Time: time.Now().UTC(), Stream: "system", Text: s})
	}}
}

// lineWriter calls fn for every complete line written (and for carriage
// return separated progress updates).
type lineWriter struct {
	fn  func(string)
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexAny(string(w.buf), "\n\r")
		if i < 0 {
			break
		}
		if line := strings.TrimSpace(string(w.buf[:i])); line != "" {
			w.fn(line)
		}
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// pump turns the agent's event lines into Events.
type pump struct {
	r       *run
	outcome agentOutcome
}

func newPump(r *run) *pump { return &pump{r: r} }

// run reads agent event lines from src until EOF, publishing as it goes.
// Reading never stops early: the agent must not block on a full pipe.
func (p *pump) run(ctx context.Context, src io.Reader) agentOutcome {
	lines := make(chan []byte, 256)
	go func() {
		defer close(lines)
		br := bufio.NewReaderSize(src, 64<<10)
		for {
			line, err := readLine(br, maxAgentLine)
			if len(line) > 0 {
				lines <- line
			}
			if err != nil {
				// Drain so the writer never blocks after a read error.
				_, _ = io.Copy(io.Discard, src)
				return
			}
		}
	}()
	e := p.r.ev
	timer := time.NewTimer(p.r.o.cfg.LogFlushInterval)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				_ = e.flush(ctx)
				return p.outcome
			}
			p.handle(ctx, line)
		case <-timer.C:
			wait, _ := e.flushDue(ctx)
			timer.Reset(wait)
		}
	}
}

// readLine reads one line, cutting lines longer than max.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull && len(line) < max {
			continue
		}
		if err == bufio.ErrBufferFull {
			err = nil // a cut line; the rest comes as the next "line"
		}
		return line, err
	}
}

func (p *pump) handle(ctx context.Context, raw []byte) {
	e := p.r.ev
	var ev agentapi.Event
	if err := decodeAgentLine(raw, &ev); err != nil || ev.Kind == "" {
		// Not an event: keep it as text so nothing the guest said is lost.
		text := strings.TrimRight(strings.ToValidUTF8(string(raw), "\uFFFD"), "\r\n")
		if text != "" {
			_ = e.line(ctx, jobspec.SetupStep, jobspec.LogLine{Time: time.Now().UTC(), Stream: "system", Text: text})
		}
		return
	}
	step := ev.Step
	if step < jobspec.SetupStep || (len(p.r.req.Steps) > 0 && step >= len(p.r.req.Steps)) {
		step = jobspec.SetupStep
	}
	t := ev.Time
	if t.IsZero() {
		t = time.Now().UTC()
	}
	switch ev.Kind {
	case agentapi.KindStepStarted:
		_ = e.emit(ctx, jobspec.Event{Kind: jobspec.EventStepStarted, Step: step, Name: ev.Name, Time: t})
	case agentapi.KindLog:
		_ = e.line(ctx, step, jobspec.LogLine{Time: t, Stream: ev.Stream, Text: ev.Line})
	case agentapi.KindAnnotation:
		_ = e.line(ctx, step, jobspec.LogLine{Time: t, Stream: "system", Text: annotationText(ev)})
	case agentapi.KindStepFinished:
		_ = e.emit(ctx, jobspec.Event{Kind: jobspec.EventStepFinished, Step: step, Time: t,
			Result: ev.Result, ExitCode: ev.ExitCode, Outputs: ev.Outputs})
	case agentapi.KindJobFinished:
		p.outcome = agentOutcome{finished: true, result: ev.Result, exitCode: ev.ExitCode, outputs: ev.Outputs}
	}
}

// annotationText renders an annotation as the platforms' log UIs show one.
func annotationText(ev agentapi.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "##[%s]", ev.Level)
	if ev.Title != "" {
		b.WriteString(ev.Title + ": ")
	}
	b.WriteString(ev.Message)
	if ev.File != "" {
		fmt.Fprintf(&b, " (%s", ev.File)
		if ev.LineNo > 0 {
			fmt.Fprintf(&b, ":%d", ev.LineNo)
		}
		b.WriteString(")")
	}
	return b.String()
}

// decodeAgentLine decodes one event line of the agent. It uses
// goccy/go-json: encoding/json's reflection was more than half of the
// orchestrator's CPU on a job writing output fast (docs/benchmarks.md).
func decodeAgentLine(raw []byte, ev *agentapi.Event) error { return gojson.Unmarshal(raw, ev) }
