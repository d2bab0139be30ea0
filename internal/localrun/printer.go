package localrun

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/solstice-ci/solstice/internal/jobspec"
)

// Printer writes the live log of local jobs: step headers, lines and
// durations, each line prefixed with the job's name. It de-duplicates events
// by (job, seq) and ignores anything after a job's job_finished.
type Printer struct {
	mu   sync.Mutex
	w    io.Writer
	jobs map[string]*jobView
}

type jobView struct {
	name      string
	steps     []string
	started   time.Time
	stepStart map[int]time.Time
	lastSeq   int64
	finished  bool
	result    string
	outputs   map[string]string
	message   string
}

// NewPrinter prints to w.
func NewPrinter(w io.Writer) *Printer { return &Printer{w: w, jobs: map[string]*jobView{}} }

// Register announces a job with its display name and step names.
func (p *Printer) Register(jobID, name string, steps []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.jobs[jobID] = &jobView{name: name, steps: steps, started: time.Now(), stepStart: map[int]time.Time{}}
}

// Result returns a finished job's result, outputs and message.
func (p *Printer) Result(jobID string) (result string, outputs map[string]string, message string, done bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	j := p.jobs[jobID]
	if j == nil {
		return "", nil, "", false
	}
	return j.result, j.outputs, j.message, j.finished
}

// Handle prints one event and reports whether it finished its job.
func (p *Printer) Handle(ev *jobspec.Event) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	j := p.jobs[ev.JobID]
	if j == nil || j.finished || ev.Seq <= j.lastSeq {
		return false
	}
	j.lastSeq = ev.Seq
	say := func(format string, args ...any) {
		fmt.Fprintf(p.w, "[%s] %s\n", j.name, fmt.Sprintf(format, args...))
	}
	switch ev.Kind {
	case jobspec.EventAccepted, jobspec.EventVMBooting, jobspec.EventDebugSSH:
		say("%s", ev.Message)
	case jobspec.EventError:
		say("error: %s", ev.Message)
	case jobspec.EventLog:
		for _, l := range ev.Lines {
			for _, line := range strings.Split(strings.TrimRight(l.Text, "\n"), "\n") {
				say("  %s", line)
			}
		}
	case jobspec.EventStepStarted:
		j.stepStart[ev.Step] = ev.Time
		if ev.Name != "" && ev.Step >= 0 && ev.Step < len(j.steps) {
			j.steps[ev.Step] = ev.Name // the name as evaluated in the guest
		}
		say("▶ %s", j.stepName(ev.Step, ev.Name))
	case jobspec.EventStepFinished:
		d := ""
		if t, ok := j.stepStart[ev.Step]; ok && !ev.Time.IsZero() {
			d = fmt.Sprintf(" in %s", ev.Time.Sub(t).Round(time.Millisecond))
		}
		mark := map[string]string{jobspec.ResultSuccess: "✓", jobspec.ResultSkipped: "–", jobspec.ResultCancelled: "⊘"}[ev.Result]
		if mark == "" {
			mark = "✗"
		}
		extra := ""
		if ev.Result == jobspec.ResultFailure {
			extra = fmt.Sprintf(", exit code %d", ev.ExitCode)
		}
		say("%s %s (%s%s%s)", mark, j.stepName(ev.Step, ""), ev.Result, extra, d)
	case jobspec.EventJobFinished:
		j.finished, j.result, j.outputs, j.message = true, ev.Result, ev.Outputs, ev.Message
		say("job %s in %s", ev.Result, time.Since(j.started).Round(100*time.Millisecond))
		return true
	}
	return false
}

func (j *jobView) stepName(i int, name string) string {
	if name != "" {
		return name
	}
	if i >= 0 && i < len(j.steps) {
		return j.steps[i]
	}
	return fmt.Sprintf("step %d", i+1)
}
