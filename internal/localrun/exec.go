// Package localrun runs a workflow file of a local repository through the
// orchestrator's job path (solstice exec): it plans the jobs by their needs,
// expands matrices, translates each leg into a JobRequest, publishes it on
// the queue and prints the events that come back.
package localrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/expr"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/workflow"
)

// Publisher is the part of the queue exec needs.
type Publisher interface {
	PublishJob(ctx context.Context, label string, body []byte) error
	ConsumeEvents(ctx context.Context, route string) (<-chan queue.Delivery, error)
	PublishCancel(ctx context.Context, body []byte) error
}

// Options of one exec run.
type Options struct {
	Workflow *workflow.Workflow
	Repo     Repo
	// Bundle is the host path of the git bundle of Repo the VMs check out.
	Bundle string
	// Jobs limits the run to these job ids and the jobs they need.
	Jobs []string
	// Matrix keeps only the matrix legs whose values match (k=v).
	Matrix map[string]string
	// Images maps a runs-on label to the image label to run it on.
	Images map[string]string
	// Secrets and Vars are the secrets and vars contexts.
	Secrets map[string]string
	Vars    map[string]string
	// Network of the VMs: jobspec.NetworkEgress (default) or NetworkNone.
	Network string
}

// Summary is the outcome of a run.
type Summary struct {
	// Results by job id (a matrix job's result combines its legs).
	Results map[string]workflow.JobResult
	// Order lists the job ids in plan order.
	Order []string
}

// OK reports whether every job that ran succeeded and none was skipped
// because a job it needs failed.
func (s Summary) OK() bool {
	for _, r := range s.Results {
		if r.Result != jobspec.ResultSuccess && r.Result != "skipped-by-if" {
			return false
		}
	}
	return true
}

// Exec runs workflows locally.
type Exec struct {
	Queue  Publisher
	Sealer *jobspec.Sealer
	Out    io.Writer
	Log    *slog.Logger
	// Route names this exec's event queue (a fresh one per run is best).
	Route string
}

// Run runs the workflow and returns when every job has ended.
func (x *Exec) Run(ctx context.Context, o Options) (Summary, error) {
	if x.Log == nil {
		x.Log = slog.New(slog.DiscardHandler)
	}
	layers, err := o.Workflow.Plan()
	if err != nil {
		return Summary{}, err
	}
	selected, err := selectJobs(o.Workflow, o.Jobs)
	if err != nil {
		return Summary{}, err
	}
	events, err := x.Queue.ConsumeEvents(ctx, x.Route)
	if err != nil {
		return Summary{}, fmt.Errorf("consuming events of %s: %w", x.Route, err)
	}
	printer := NewPrinter(x.Out)
	w := &waiter{done: map[string]chan struct{}{}}
	go x.pump(ctx, events, printer, w)

	sum := Summary{Results: map[string]workflow.JobResult{}}
	for _, layer := range layers {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, job := range layer {
			if !selected[strings.ToLower(job.ID)] {
				continue
			}
			sum.Order = append(sum.Order, job.ID)
			wg.Add(1)
			go func(job *workflow.Job) {
				defer wg.Done()
				mu.Lock()
				needs := neededResults(job, sum.Results)
				mu.Unlock()
				res := x.runJob(ctx, o, job, needs, printer, w)
				mu.Lock()
				sum.Results[job.ID] = res
				mu.Unlock()
			}(job)
		}
		wg.Wait()
		if ctx.Err() != nil {
			return sum, ctx.Err()
		}
	}
	fmt.Fprintln(x.Out)
	for _, id := range sum.Order {
		r := sum.Results[id].Result
		if r == "skipped-by-if" {
			r = "skipped (if)"
		}
		fmt.Fprintf(x.Out, "%-24s %s\n", id, r)
	}
	return sum, nil
}

// selectJobs returns the lower-case ids of the jobs to run: all, or the
// named ones and everything they need.
func selectJobs(w *workflow.Workflow, names []string) (map[string]bool, error) {
	byID := map[string]*workflow.Job{}
	for _, j := range w.Jobs {
		byID[strings.ToLower(j.ID)] = j
	}
	out := map[string]bool{}
	if len(names) == 0 {
		for id := range byID {
			out[id] = true
		}
		return out, nil
	}
	var add func(id string) error
	add = func(id string) error {
		id = strings.ToLower(id)
		j, ok := byID[id]
		if !ok {
			ids := slices.Sorted(maps.Keys(byID))
			return fmt.Errorf("the workflow has no job %q (jobs: %s)", id, strings.Join(ids, ", "))
		}
		if out[id] {
			return nil
		}
		out[id] = true
		for _, n := range j.Needs {
			if err := add(n.Value); err != nil {
				return err
			}
		}
		return nil
	}
	for _, n := range names {
		if err := add(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func neededResults(job *workflow.Job, results map[string]workflow.JobResult) map[string]workflow.JobResult {
	out := map[string]workflow.JobResult{}
	for _, n := range job.Needs {
		for id, r := range results {
			if strings.EqualFold(id, n.Value) {
				if r.Result == "skipped-by-if" {
					r.Result = jobspec.ResultSkipped
				}
				out[id] = r
			}
		}
	}
	return out
}

// runJob runs every matrix leg of job and combines their results.
func (x *Exec) runJob(ctx context.Context, o Options, job *workflow.Job, needs map[string]workflow.JobResult, p *Printer, w *waiter) workflow.JobResult {
	contexts := map[string]any{
		"github": workflow.GitHubContext(o.Workflow, job, LocalRunOf(o.Repo)),
		"needs":  workflow.NeedsContext(needs),
		"vars":   toAny(o.Vars),
		"inputs": map[string]any{},
	}
	say := func(format string, args ...any) {
		fmt.Fprintf(x.Out, "[%s] %s\n", job.ID, fmt.Sprintf(format, args...))
	}
	run, err := job.ShouldRun(contexts)
	if err != nil {
		say("error: %v", err)
		return workflow.JobResult{Result: jobspec.ResultFailure}
	}
	if !run {
		for _, r := range needs {
			if r.Result != jobspec.ResultSuccess {
				say("skipped: a job it needs did not succeed")
				return workflow.JobResult{Result: jobspec.ResultSkipped}
			}
		}
		say("skipped: its if: is false")
		return workflow.JobResult{Result: "skipped-by-if"}
	}
	legs, err := job.Matrix(&expr.Context{Values: contexts})
	if err != nil {
		say("error: %v", err)
		return workflow.JobResult{Result: jobspec.ResultFailure}
	}
	legs = filterLegs(legs, o.Matrix)
	if len(legs) == 0 {
		say("skipped: no matrix leg matches --matrix")
		return workflow.JobResult{Result: "skipped-by-if"}
	}
	results := make([]workflow.JobResult, len(legs))
	var wg sync.WaitGroup
	for i, leg := range legs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = x.runLeg(ctx, o, job, leg, i, len(legs), contexts, p, w)
		}()
	}
	wg.Wait()
	out := workflow.JobResult{Result: jobspec.ResultSuccess, Outputs: map[string]string{}}
	for _, r := range results {
		switch {
		case r.Result == jobspec.ResultCancelled:
			out.Result = jobspec.ResultCancelled
		case r.Result != jobspec.ResultSuccess && out.Result == jobspec.ResultSuccess:
			out.Result = jobspec.ResultFailure
		}
		maps.Copy(out.Outputs, r.Outputs) // like GitHub: the last leg's value wins
	}
	return out
}

func filterLegs(legs []map[string]any, want map[string]string) []map[string]any {
	if len(want) == 0 {
		return legs
	}
	var out []map[string]any
	for _, leg := range legs {
		ok := true
		for k, v := range want {
			if expr.ToString(leg[k]) != v {
				ok = false
			}
		}
		if ok {
			out = append(out, leg)
		}
	}
	return out
}

// runLeg translates and runs one matrix leg.
func (x *Exec) runLeg(ctx context.Context, o Options, job *workflow.Job, leg map[string]any, i, n int, contexts map[string]any, p *Printer, w *waiter) workflow.JobResult {
	tr, err := workflow.Translate(workflow.Input{Workflow: o.Workflow, Job: job, Matrix: leg, Index: i, Total: n, Contexts: contexts})
	if err != nil {
		fmt.Fprintf(x.Out, "[%s] error: %v\n", job.ID, err)
		return workflow.JobResult{Result: jobspec.ResultFailure}
	}
	if tr.Skip {
		return workflow.JobResult{Result: "skipped-by-if"}
	}
	label := tr.RunsOn
	if img, ok := o.Images[label]; ok {
		label = img
	}
	id := uuid.NewString()
	secrets := jobspec.Secrets{Secrets: o.Secrets}
	sealed, err := x.Sealer.Seal(id, secrets)
	if err != nil {
		fmt.Fprintf(x.Out, "[%s] error: sealing secrets: %v\n", tr.Name, err)
		return workflow.JobResult{Result: jobspec.ResultFailure}
	}
	checkout := tr.Checkout
	checkout.Bundle = o.Bundle
	network := o.Network
	if network == "" {
		network = jobspec.NetworkEgress
	}
	req := jobspec.JobRequest{
		Version: jobspec.Version, JobID: id,
		Source:  jobspec.Source{Platform: jobspec.PlatformLocal, Instance: x.Route, TaskID: fmt.Sprintf("%s/%d", job.ID, i)},
		Project: o.Repo.Name, RepoURL: "file://" + filepath.ToSlash(o.Repo.Root), CommitSHA: o.Repo.SHA, Ref: o.Repo.Ref,
		RunsOn: label, Name: tr.Name, Steps: tr.Steps, Env: tr.Env, Contexts: tr.Contexts, Outputs: tr.Outputs,
		Checkout: checkout, Secrets: sealed, TimeoutMinutes: tr.TimeoutMinutes, Network: network, CreatedAt: time.Now().UTC(),
	}
	body, err := jobspec.Marshal(req)
	if err != nil {
		fmt.Fprintf(x.Out, "[%s] error: %v\n", tr.Name, err)
		return workflow.JobResult{Result: jobspec.ResultFailure}
	}
	names := make([]string, len(tr.Steps))
	for k, s := range tr.Steps {
		names[k] = stepName(s)
	}
	p.Register(id, tr.Name, names)
	done := w.add(id)
	fmt.Fprintf(x.Out, "[%s] queued on %s\n", tr.Name, label)
	if err := x.Queue.PublishJob(ctx, label, body); err != nil {
		if errors.Is(err, queue.ErrNoRoute) {
			fmt.Fprintf(x.Out, "[%s] error: no orchestrator serves the label %q: add it to the image catalog or map it with --image %s=LABEL\n", tr.Name, label, label)
		} else {
			fmt.Fprintf(x.Out, "[%s] error: publishing the job: %v\n", tr.Name, err)
		}
		return workflow.JobResult{Result: jobspec.ResultFailure}
	}
	select {
	case <-done:
	case <-ctx.Done():
		cancel, _ := jobspec.Marshal(jobspec.Cancel{Version: jobspec.Version, JobID: id, Reason: "solstice exec was interrupted"})
		cctx, stop := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = x.Queue.PublishCancel(cctx, cancel)
		stop()
		return workflow.JobResult{Result: jobspec.ResultCancelled}
	}
	result, outputs, _, _ := p.Result(id)
	if tr.ContinueOnError && result == jobspec.ResultFailure {
		result = jobspec.ResultSuccess
	}
	if result == jobspec.ResultErrored {
		result = jobspec.ResultFailure
	}
	return workflow.JobResult{Result: result, Outputs: outputs}
}

func stepName(s agentapi.Step) string {
	switch {
	case s.Name != "":
		return s.Name
	case s.IsCheckout():
		return "Run " + s.Uses
	}
	line, _, _ := strings.Cut(strings.TrimSpace(s.Run), "\n")
	return "Run " + line
}

// pump prints events and wakes the legs whose job finished.
func (x *Exec) pump(ctx context.Context, events <-chan queue.Delivery, p *Printer, w *waiter) {
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-events:
			if !ok {
				return
			}
			ev, err := jobspec.DecodeEvent(d.Body())
			if err != nil {
				x.Log.Warn("dropping a malformed event", "err", err)
				_ = d.Ack()
				continue
			}
			if p.Handle(ev) {
				w.finish(ev.JobID)
			}
			_ = d.Ack()
		}
	}
}

// waiter wakes the goroutine waiting for a job.
type waiter struct {
	mu   sync.Mutex
	done map[string]chan struct{}
}

func (w *waiter) add(id string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan struct{})
	w.done[id] = ch
	return ch
}

func (w *waiter) finish(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ch, ok := w.done[id]; ok {
		close(ch)
		delete(w.done, id)
	}
}

// LocalRunOf describes the repository for the github context.
func LocalRunOf(r Repo) workflow.LocalRun {
	return workflow.LocalRun{Repository: r.Name, SHA: r.SHA, Ref: r.Ref}
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Labels returns the runs-on labels of the workflow's jobs that exec will
// publish to (after --image mapping), sorted; for messages and checks.
func Labels(w *workflow.Workflow, images map[string]string) []string {
	set := map[string]bool{}
	for _, j := range w.Jobs {
		for _, l := range j.RunsOn {
			v := l.Value
			if img, ok := images[v]; ok {
				v = img
			}
			set[v] = true
		}
	}
	out := slices.Collect(maps.Keys(set))
	sort.Strings(out)
	return out
}
