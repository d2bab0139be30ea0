// Package agent is the guest agent solstice-runner: it fetches the
// repository at the job's commit, runs the job's steps (or the repository's
// .solstice/workflow.kdl, or .solstice/job.sh) and reports what happens as
// a human log on stderr and JSON event lines on a stream of its own.
//
// It imports nothing of the host side: only agentapi (the contract) and
// expr (the expression engine the translator on the host shares).
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/expr"
)

// Files of the repository the agent falls back to when the job has no steps.
const (
	KDLFile = ".solstice/workflow.kdl"
	JobSh   = ".solstice/job.sh"
)

// Options configure one run of the agent.
type Options struct {
	Job     agentapi.JobFile
	Workdir string    // the workspace; default agentapi.DefaultWorkdir
	Events  io.Writer // JSON event lines; nil for none
	Human   io.Writer // the human log; nil for none
	// Environ is the environment steps start from (os.Environ()).
	Environ []string
	// GOOS and GOARCH describe the guest; default the agent's own.
	GOOS, GOARCH string
	// TempDir is where RUNNER_TEMP is made; default os.TempDir().
	TempDir string
	Now     func() time.Time
	// KillGrace is how long a cancelled step's process group gets after
	// SIGTERM before SIGKILL; default 5s.
	KillGrace time.Duration
}

// Result is the outcome of a run.
type Result struct {
	Result   string // agentapi.ResultSuccess, ResultFailure or ResultCancelled
	ExitCode int
	Outputs  map[string]string
}

// stepState is what later steps see of a finished step as steps.<id>.
type stepState struct {
	outcome, conclusion string
	outputs             map[string]string
}

type runner struct {
	o       Options
	job     agentapi.JobFile
	e       *emitter
	mask    *Masker
	cmds    *commands
	temp    string
	env     map[string]string // job env, then GITHUB_ENV additions
	path    []string          // GITHUB_PATH additions, newest first
	steps   map[string]stepState
	status  string // job status: success, failure, cancelled
	summary strings.Builder
	pgMu    sync.Mutex
	pgids   []int // process groups of steps, killed at the end of the job
	files   map[string]string
}

// Run runs the job and returns its result. It never panics on bad input:
// a bad job, a failed fetch or a failing step all end in a result.
func Run(ctx context.Context, o Options) Result {
	if o.Workdir == "" {
		o.Workdir = agentapi.DefaultWorkdir
	}
	if o.GOOS == "" {
		o.GOOS = runtime.GOOS
	}
	if o.GOARCH == "" {
		o.GOARCH = runtime.GOARCH
	}
	if o.KillGrace == 0 {
		o.KillGrace = 5 * time.Second
	}
	mask := NewMasker()
	for _, v := range o.Job.Secrets {
		mask.Add(v)
	}
	for _, v := range o.Job.Mask {
		mask.Add(v)
	}
	mask.Add(o.Job.Checkout.Token)
	r := &runner{o: o, job: o.Job, mask: mask, e: newEmitter(o.Events, o.Human, mask, o.Now),
		cmds: &commands{mask: mask}, steps: map[string]stepState{}, status: expr.StatusSuccess}
	defer r.e.close() // on a panic too: nothing buffered is lost
	res := r.run(ctx)
	r.killGroups()
	if r.temp != "" {
		_ = os.RemoveAll(r.temp)
	}
	r.e.emit(agentapi.Event{Kind: agentapi.KindJobFinished, Step: agentapi.SetupStep, Result: res.Result, ExitCode: res.ExitCode, Outputs: res.Outputs})
	r.e.humanf("job %s (exit code %d)", res.Result, res.ExitCode)
	r.e.close()
	if err := r.e.Err(); err != nil && res.ExitCode == 0 {
		res.ExitCode = agentapi.ExitInternal
	}
	return res
}

func (r *runner) run(ctx context.Context) Result {
	names := make([]string, len(r.job.Steps))
	for i, s := range r.job.Steps {
		names[i] = stepDisplayName(s)
	}
	r.e.emit(agentapi.Event{Kind: agentapi.KindJobStarted, Step: agentapi.SetupStep, Steps: names})
	if r.job.TimeoutMinutes > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, minutes(r.job.TimeoutMinutes), errJobTimeout)
		defer cancel()
	}

	var err error
	if r.temp, err = os.MkdirTemp(r.o.TempDir, "solstice-runner-"); err != nil {
		r.e.system(agentapi.SetupStep, "error: creating the runner's temporary folder: %v", err)
		return Result{Result: agentapi.ResultFailure, ExitCode: agentapi.ExitInternal}
	}
	if err := os.MkdirAll(r.o.Workdir, 0o755); err != nil {
		r.e.system(agentapi.SetupStep, "error: creating the workspace %s: %v", r.o.Workdir, err)
		return Result{Result: agentapi.ResultFailure, ExitCode: agentapi.ExitInternal}
	}
	r.env = map[string]string{}
	ectx := r.exprContext(nil)
	for k, v := range r.job.Env {
		val, err := expr.Interpolate(v, ectx)
		if err != nil {
			r.e.system(agentapi.SetupStep, "error: env.%s: %v", k, err)
			return Result{Result: agentapi.ResultFailure, ExitCode: agentapi.ExitBadJob}
		}
		r.env[k] = val
	}

	steps := r.job.Steps
	hasCheckout := slices.ContainsFunc(steps, agentapi.Step.IsCheckout)
	if len(steps) == 0 || (!r.job.Checkout.Skip && !hasCheckout) {
		if res, ok := r.fetch(ctx, agentapi.SetupStep, r.job.Checkout, ""); !ok {
			return res
		}
	}
	if len(steps) == 0 {
		var code int
		if steps, code = r.fallbackSteps(); code != 0 {
			return Result{Result: agentapi.ResultFailure, ExitCode: code}
		}
		names := make([]string, len(steps))
		for i, s := range steps {
			names[i] = stepDisplayName(s)
		}
		r.e.emit(agentapi.Event{Kind: agentapi.KindJobStarted, Step: agentapi.SetupStep, Steps: names})
	}

	exitCode := 0
	for i, st := range steps {
		res := r.runStep(ctx, i, st)
		if res.skipped {
			continue
		}
		if res.outcome != agentapi.ResultSuccess && !st.ContinueOnError {
			switch {
			case res.outcome == agentapi.ResultCancelled:
				r.status = expr.StatusCancelled
				exitCode = agentapi.ExitCancelled
			case r.status == expr.StatusSuccess:
				r.status = expr.StatusFailure
				exitCode = res.exitCode
				if exitCode == 0 {
					exitCode = 1
				}
			}
		}
	}
	if r.status == expr.StatusSuccess && ctx.Err() != nil {
		r.status, exitCode = expr.StatusCancelled, agentapi.ExitCancelled
		if context.Cause(ctx) == errJobTimeout {
			r.status, exitCode = expr.StatusFailure, agentapi.ExitStepTimeout
		}
	}
	outputs := r.jobOutputs()
	if s := strings.TrimSpace(r.summary.String()); s != "" {
		r.e.system(agentapi.SetupStep, "job summary:")
		for _, l := range strings.Split(s, "\n") {
			r.e.system(agentapi.SetupStep, "%s", l)
		}
	}
	result := agentapi.ResultSuccess
	switch r.status {
	case expr.StatusFailure:
		result = agentapi.ResultFailure
	case expr.StatusCancelled:
		result = agentapi.ResultCancelled
	}
	return Result{Result: result, ExitCode: exitCode, Outputs: outputs}
}

var errJobTimeout = errors.New("the job ran past its timeout-minutes")

// fetch checks the repository out into the workspace (or sub, a path inside
// it, for a checkout step's path input).
func (r *runner) fetch(ctx context.Context, step int, c agentapi.Checkout, sub string) (Result, bool) {
	depth := 1
	if c.FetchDepth != nil {
		depth = *c.FetchDepth
	}
	dir := r.o.Workdir
	if sub != "" {
		var err error
		if dir, err = insideWorkspace(r.o.Workdir, sub); err != nil {
			r.e.system(step, "error: checkout path: %v", err)
			return Result{Result: agentapi.ResultFailure, ExitCode: agentapi.ExitBadJob}, false
		}
	}
	spec := fetchSpec{RepoURL: r.job.RepoURL, Bundle: c.Bundle, SHA: r.job.CommitSHA, Ref: r.job.Ref,
		Depth: depth, Token: c.Token, Submodules: c.Submodules}
	out := &lineWriter{e: r.e, step: step, stream: StreamSystem}
	r.e.flush()
	err := fetchRepo(ctx, dir, spec, r.o.Environ, out, func(f string, a ...any) { r.e.system(step, f, a...) })
	out.Flush()
	if err != nil {
		r.e.system(step, "error: %v", err)
		code := agentapi.ExitFetchFailed
		if ctx.Err() != nil && context.Cause(ctx) != errJobTimeout {
			return Result{Result: agentapi.ResultCancelled, ExitCode: agentapi.ExitCancelled}, false
		}
		return Result{Result: agentapi.ResultFailure, ExitCode: code}, false
	}
	return Result{}, true
}

// fallbackSteps finds what to run in a job without steps: the repository's
// workflow.kdl, else its job.sh.
func (r *runner) fallbackSteps() ([]agentapi.Step, int) {
	kdlPath := filepath.Join(r.o.Workdir, KDLFile)
	if data, err := os.ReadFile(kdlPath); err == nil {
		w, err := ParseKDL(KDLFile, data)
		if err != nil {
			r.e.system(agentapi.SetupStep, "error: %v", err)
			return nil, agentapi.ExitBadJob
		}
		steps, env := w.For(r.o.GOOS)
		if len(steps) == 0 {
			r.e.system(agentapi.SetupStep, "error: %s has no steps for %s", KDLFile, r.o.GOOS)
			return nil, agentapi.ExitNothingToRun
		}
		for k, v := range env {
			if _, set := r.job.Env[k]; !set {
				r.env[k] = v
			}
		}
		r.e.system(agentapi.SetupStep, "running %s (%d steps for %s)", KDLFile, len(steps), r.o.GOOS)
		return steps, 0
	}
	shPath := filepath.Join(r.o.Workdir, JobSh)
	if fi, err := os.Stat(shPath); err == nil && fi.Mode().IsRegular() {
		run := "exec sh ./" + JobSh
		if fi.Mode()&0o111 != 0 {
			run = "exec ./" + JobSh
		}
		r.e.system(agentapi.SetupStep, "running %s", JobSh)
		return []agentapi.Step{{Name: JobSh, Run: run}}, 0
	}
	r.e.system(agentapi.SetupStep, "error: nothing to run: the job has no steps and the repository has neither %s nor %s", KDLFile, JobSh)
	return nil, agentapi.ExitNothingToRun
}

type stepResult struct {
	skipped   bool
	outcome   string
	exitCode  int
	outputs   map[string]string
	cancelled bool
}

func (r *runner) runStep(ctx context.Context, i int, st agentapi.Step) stepResult {
	status := r.status
	if ctx.Err() != nil && status == expr.StatusSuccess {
		status = expr.StatusCancelled
		if context.Cause(ctx) == errJobTimeout {
			status = expr.StatusFailure
		}
	}
	// Steps whose if: asks for it (always(), cancelled()) still run after a
	// cancellation or a job timeout, on a context of their own.
	if ctx.Err() != nil {
		ctx = context.WithoutCancel(ctx)
	}
	stepEnv := map[string]string{}
	maps.Copy(stepEnv, r.env)
	ectx := r.exprContext(nil)
	ectx.Status = status

	name := stepDisplayName(st)
	if n, err := expr.Interpolate(name, ectx); err == nil && n != "" {
		name = n
	}
	cond := st.If
	if strings.TrimSpace(cond) == "" {
		cond = "success()"
	}
	run, err := expr.EvaluateCondition(cond, ectx)
	if err != nil {
		r.e.emit(agentapi.Event{Kind: agentapi.KindStepStarted, Step: i, Name: name})
		r.e.system(i, "error: if: %v", err)
		return r.finishStep(i, st, agentapi.ResultFailure, 1, nil, time.Now())
	}
	if !run {
		r.e.emit(agentapi.Event{Kind: agentapi.KindStepFinished, Step: i, Name: name, Result: agentapi.ResultSkipped, Outcome: agentapi.ResultSkipped})
		r.e.humanf("── step %d skipped: %s (if: %s)", i+1, name, cond)
		if st.ID != "" {
			r.steps[st.ID] = stepState{outcome: agentapi.ResultSkipped, conclusion: agentapi.ResultSkipped}
		}
		return stepResult{skipped: true}
	}
	start := time.Now()
	r.e.emit(agentapi.Event{Kind: agentapi.KindStepStarted, Step: i, Name: name})
	r.e.humanf("── step %d: %s", i+1, name)

	for k, v := range st.Env {
		val, err := expr.Interpolate(v, ectx)
		if err != nil {
			r.e.system(i, "error: env.%s: %v", k, err)
			return r.finishStep(i, st, agentapi.ResultFailure, 1, nil, start)
		}
		stepEnv[k] = val
	}
	ectx = r.exprContext(stepEnv)
	ectx.Status = status

	if st.TimeoutMinutes > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, minutes(st.TimeoutMinutes), errStepTimeout)
		defer cancel()
	}
	if st.IsCheckout() {
		return r.checkoutStep(ctx, i, st, ectx, start)
	}

	script, err := expr.Interpolate(st.Run, ectx)
	if err != nil {
		r.e.system(i, "error: run: %v", err)
		return r.finishStep(i, st, agentapi.ResultFailure, 1, nil, start)
	}
	dir := r.o.Workdir
	if st.WorkingDirectory != "" {
		wd, err := expr.Interpolate(st.WorkingDirectory, ectx)
		if err == nil {
			wd, err = insideWorkspace(r.o.Workdir, wd)
		}
		if err != nil {
			r.e.system(i, "error: working-directory: %v", err)
			return r.finishStep(i, st, agentapi.ResultFailure, 1, nil, start)
		}
		if fi, err := os.Stat(wd); err != nil || !fi.IsDir() {
			r.e.system(i, "error: working-directory %s does not exist", wd)
			return r.finishStep(i, st, agentapi.ResultFailure, 1, nil, start)
		}
		dir = wd
	}
	code, outputs, err := r.exec(ctx, i, st, script, dir, stepEnv)
	switch {
	case err != nil && context.Cause(ctx) == errStepTimeout:
		r.e.system(i, "error: the step ran past its timeout-minutes (%g) and was killed", st.TimeoutMinutes)
		return r.finishStep(i, st, agentapi.ResultFailure, agentapi.ExitStepTimeout, outputs, start)
	case err != nil && context.Cause(ctx) == errJobTimeout:
		r.e.system(i, "error: the job ran past its timeout-minutes (%g); the step was killed", r.job.TimeoutMinutes)
		return r.finishStep(i, st, agentapi.ResultFailure, agentapi.ExitStepTimeout, outputs, start)
	case err != nil && ctx.Err() != nil:
		r.e.system(i, "the step was cancelled")
		return r.finishStep(i, st, agentapi.ResultCancelled, agentapi.ExitCancelled, outputs, start)
	case err != nil:
		r.e.system(i, "error: %v", err)
		return r.finishStep(i, st, agentapi.ResultFailure, max(code, 1), outputs, start)
	case code != 0:
		r.e.system(i, "error: the step exited with code %d", code)
		return r.finishStep(i, st, agentapi.ResultFailure, code, outputs, start)
	}
	return r.finishStep(i, st, agentapi.ResultSuccess, 0, outputs, start)
}

var errStepTimeout = errors.New("the step ran past its timeout-minutes")

func (r *runner) finishStep(i int, st agentapi.Step, outcome string, code int, outputs map[string]string, start time.Time) stepResult {
	conclusion := outcome
	if outcome == agentapi.ResultFailure && st.ContinueOnError {
		conclusion = agentapi.ResultSuccess
		r.e.system(i, "continue-on-error: the job goes on")
	}
	if st.ID != "" {
		r.steps[st.ID] = stepState{outcome: outcome, conclusion: conclusion, outputs: outputs}
	}
	r.e.emit(agentapi.Event{Kind: agentapi.KindStepFinished, Step: i, Result: conclusion, Outcome: outcome, ExitCode: code, Outputs: outputs})
	r.e.humanf("── step %d %s (exit code %d) in %s", i+1, outcome, code, time.Since(start).Round(time.Millisecond))
	return stepResult{outcome: outcome, exitCode: code, outputs: outputs}
}

// checkoutStep is actions/checkout: the agent's own fetch, with the step's
// inputs over the job's checkout options.
func (r *runner) checkoutStep(ctx context.Context, i int, st agentapi.Step, ectx *expr.Context, start time.Time) stepResult {
	c := r.job.Checkout
	with := map[string]string{}
	for k, v := range st.With {
		val, err := expr.Interpolate(v, ectx)
		if err != nil {
			r.e.system(i, "error: with.%s: %v", k, err)
			return r.finishStep(i, st, agentapi.ResultFailure, 1, nil, start)
		}
		with[strings.ToLower(k)] = val
	}
	if v, ok := with["fetch-depth"]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			r.e.system(i, "error: with.fetch-depth must be a whole number of 0 or more, not %q", v)
			return r.finishStep(i, st, agentapi.ResultFailure, 1, nil, start)
		}
		c.FetchDepth = &n
	}
	if v, ok := with["submodules"]; ok {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true", "recursive":
			c.Submodules = strings.ToLower(strings.TrimSpace(v))
		default:
			c.Submodules = ""
		}
	}
	if v := with["token"]; v != "" {
		r.mask.Add(v)
		c.Token = v
	}
	if res, ok := r.fetch(ctx, i, c, with["path"]); !ok {
		outcome := res.Result
		return r.finishStep(i, st, outcome, res.ExitCode, nil, start)
	}
	return r.finishStep(i, st, agentapi.ResultSuccess, 0, nil, start)
}

// exec runs one run: script and collects what it wrote to the step files.
func (r *runner) exec(ctx context.Context, i int, st agentapi.Step, script, dir string, stepEnv map[string]string) (int, map[string]string, error) {
	argv, scriptPath, err := r.shellCommand(i, st.Shell, script)
	if err != nil {
		return 1, nil, err
	}
	if scriptPath != "" {
		defer os.Remove(scriptPath)
	}
	files, err := r.commandFiles()
	if err != nil {
		return 1, nil, err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = r.environ(i, st, stepEnv, files)
	stdout := &lineWriter{e: r.e, cmds: r.cmds, step: i, stream: StreamStdout}
	stderr := &lineWriter{e: r.e, cmds: r.cmds, step: i, stream: StreamStderr}
	cmd.Stdout, cmd.Stderr = &lockedWriter{w: stdout}, &lockedWriter{w: stderr}
	setProcessGroup(cmd)
	grace := r.o.KillGrace
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		_ = killGroup(cmd.Process.Pid, false)
		go func(pid int) {
			time.Sleep(grace)
			_ = killGroup(pid, true)
		}(cmd.Process.Pid)
		return nil
	}
	// A step's background process that keeps its output open must not
	// hold the step forever: after the shell exits, output gets this long.
	cmd.WaitDelay = grace + 2*time.Second
	r.e.flush() // the step's header leaves before the step runs
	if err := cmd.Start(); err != nil {
		return 1, nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	r.pgMu.Lock()
	r.pgids = append(r.pgids, cmd.Process.Pid)
	r.pgMu.Unlock()
	waitErr := cmd.Wait()
	stdout.Flush()
	stderr.Flush()

	code := 0
	if waitErr != nil {
		var ee *exec.ExitError
		if errors.As(waitErr, &ee) {
			code = ee.ExitCode()
			if code < 0 {
				code = 128 + signalOf(ee)
			}
			waitErr = nil
			if ctx.Err() != nil {
				waitErr = ctx.Err()
			}
		} else if errors.Is(waitErr, exec.ErrWaitDelay) {
			waitErr = nil
			code = cmd.ProcessState.ExitCode()
		}
	}

	outputs, err := r.collectFiles(i, files)
	if err != nil && waitErr == nil && code == 0 {
		return 1, outputs, err
	} else if err != nil {
		r.e.system(i, "error: %v", err)
	}
	return code, outputs, waitErr
}

// commandFiles returns the files behind GITHUB_ENV, GITHUB_PATH,
// GITHUB_OUTPUT, GITHUB_STATE and GITHUB_STEP_SUMMARY, empty. They are made
// once per job and emptied before each step (cheaper than making new ones).
func (r *runner) commandFiles() (map[string]string, error) {
	if r.files == nil {
		r.files = map[string]string{}
		for _, f := range []string{"GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_STATE", "GITHUB_STEP_SUMMARY"} {
			r.files[f] = filepath.Join(r.temp, strings.ToLower(f))
		}
	}
	for f, p := range r.files {
		if fi, err := os.Stat(p); err == nil && fi.Size() == 0 {
			continue // still empty: no write needed
		}
		if err := os.Truncate(p, 0); err != nil {
			if !os.IsNotExist(err) {
				return nil, fmt.Errorf("emptying %s: %w", f, err)
			}
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				return nil, fmt.Errorf("creating %s: %w", f, err)
			}
		}
	}
	return r.files, nil
}

// collectFiles reads what the step wrote to GITHUB_ENV, GITHUB_PATH,
// GITHUB_OUTPUT and GITHUB_STEP_SUMMARY.
func (r *runner) collectFiles(i int, files map[string]string) (map[string]string, error) {
	var errs []error
	env, _, err := parseKeyValueFile(files["GITHUB_ENV"])
	if err != nil {
		errs = append(errs, err)
	}
	for k, v := range env {
		r.env[k] = v
	}
	dirs, err := readPathFile(files["GITHUB_PATH"])
	if err != nil {
		errs = append(errs, err)
	}
	for _, d := range dirs {
		r.path = append([]string{d}, r.path...)
	}
	outputs, _, err := parseKeyValueFile(files["GITHUB_OUTPUT"])
	if err != nil {
		errs = append(errs, err)
	}
	for k, v := range outputs {
		outputs[k] = r.mask.Replace(v)
	}
	if data, err := readIfAny(files["GITHUB_STEP_SUMMARY"]); err == nil && len(data) > 0 {
		if len(data) > 1<<20 {
			data = data[:1<<20]
		}
		r.summary.WriteString(r.mask.Replace(string(data)))
		r.summary.WriteString("\n")
	}
	if len(outputs) == 0 {
		outputs = nil
	}
	return outputs, errors.Join(errs...)
}

// inlineScript is the longest script passed to sh and bash with -c rather
// than through a file: one file less per step is most of the agent's
// per-step cost (docs/benchmarks.md); Linux limits one argument to 128 KiB.
const inlineScript = 64 << 10

// shellCommand returns the command that runs script, and the file it wrote
// the script to ("" when the script goes inline).
func (r *runner) shellCommand(i int, shell, script string) ([]string, string, error) {
	shell = strings.TrimSpace(shell)
	if shell == "bash" {
		if _, err := exec.LookPath("bash"); err != nil {
			r.e.system(i, "warning: bash is not installed in the guest; running the step with sh -e")
			shell = "sh"
		}
	}
	inline := len(script) < inlineScript
	switch shell {
	case "", "sh":
		if inline {
			return []string{"sh", "-e", "-c", script, "sh"}, "", nil
		}
	case "bash":
		if inline {
			return []string{"bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script, "bash"}, "", nil
		}
	case "pwsh", "powershell", "cmd":
		return nil, "", fmt.Errorf("shell %q is not available on %s guests", shell, r.o.GOOS)
	}
	ext := ".sh"
	if strings.HasPrefix(shell, "python") {
		ext = ".py"
	}
	path := filepath.Join(r.temp, fmt.Sprintf("step_%d%s", i, ext))
	if err := os.WriteFile(path, []byte(script+"\n"), 0o700); err != nil {
		return nil, "", fmt.Errorf("writing the step's script: %w", err)
	}
	switch shell {
	case "", "sh":
		return []string{"sh", "-e", path}, path, nil
	case "bash":
		return []string{"bash", "--noprofile", "--norc", "-eo", "pipefail", path}, path, nil
	case "python":
		return []string{"python3", path}, path, nil
	}
	fields := strings.Fields(shell)
	if !strings.Contains(shell, "{0}") {
		return append(fields, path), path, nil
	}
	for k, f := range fields {
		fields[k] = strings.ReplaceAll(f, "{0}", path)
	}
	return fields, path, nil
}

// environ is the environment of a step: the agent's, the runner's
// variables, the job env with GITHUB_ENV additions, then the step's env.
func (r *runner) environ(i int, st agentapi.Step, stepEnv map[string]string, files map[string]string) []string {
	env := map[string]string{}
	for _, kv := range r.o.Environ {
		if k, v, ok := strings.Cut(kv, "="); ok && !strings.HasPrefix(k, "SOLSTICE_") {
			env[k] = v
		}
	}
	if github, ok := r.job.Contexts["github"].(map[string]any); ok {
		for k, v := range github {
			switch k {
			case "token", "event", "secret_source":
				continue
			}
			switch v.(type) {
			case string, float64, int, int64, bool:
				env["GITHUB_"+strings.ToUpper(k)] = expr.ToString(v)
			}
		}
	}
	env["CI"] = "true"
	env["GITHUB_ACTIONS"] = "true"
	env["SOLSTICE_CI"] = "true"
	env["GITHUB_WORKSPACE"] = r.o.Workdir
	if r.job.CommitSHA != "" {
		env["GITHUB_SHA"] = r.job.CommitSHA
	}
	if r.job.Ref != "" {
		env["GITHUB_REF"] = r.job.Ref
	}
	action := st.ID
	if action == "" {
		action = "__run_" + strconv.Itoa(i)
	}
	env["GITHUB_ACTION"] = action
	for k, p := range files {
		env[k] = p
	}
	for k, v := range r.runnerContext() {
		env["RUNNER_"+strings.ToUpper(k)] = expr.ToString(v)
	}
	maps.Copy(env, stepEnv)
	if len(r.path) > 0 {
		env["PATH"] = strings.Join(r.path, string(os.PathListSeparator)) + string(os.PathListSeparator) + env["PATH"]
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

func (r *runner) runnerContext() map[string]any {
	osName := map[string]string{"linux": "Linux", "illumos": "illumos", "freebsd": "FreeBSD", "solaris": "Solaris", "darwin": "macOS", "openbsd": "OpenBSD", "netbsd": "NetBSD"}[r.o.GOOS]
	if osName == "" {
		osName = r.o.GOOS
	}
	arch := map[string]string{"amd64": "X64", "arm64": "ARM64", "386": "X86", "arm": "ARM"}[r.o.GOARCH]
	if arch == "" {
		arch = strings.ToUpper(r.o.GOARCH)
	}
	host, _ := os.Hostname()
	return map[string]any{
		"os": osName, "arch": arch, "name": host, "temp": r.temp,
		"tool_cache": filepath.Join(r.temp, "tool_cache"), "environment": "self-hosted",
	}
}

// exprContext builds the expression contexts a step sees.
func (r *runner) exprContext(stepEnv map[string]string) *expr.Context {
	v := map[string]any{}
	for k, c := range r.job.Contexts {
		v[strings.ToLower(k)] = c
	}
	github := map[string]any{}
	if g, ok := v["github"].(map[string]any); ok {
		maps.Copy(github, g)
	}
	github["workspace"] = r.o.Workdir
	if r.job.CommitSHA != "" {
		github["sha"] = r.job.CommitSHA
	}
	if t := r.job.Secrets["GITHUB_TOKEN"]; t != "" {
		github["token"] = t
	} else if r.job.Checkout.Token != "" {
		github["token"] = r.job.Checkout.Token
	}
	v["github"] = github
	env := map[string]any{}
	for k, val := range r.env {
		env[k] = val
	}
	for k, val := range stepEnv {
		env[k] = val
	}
	v["env"] = env
	secrets := map[string]any{}
	for k, val := range r.job.Secrets {
		secrets[k] = val
	}
	v["secrets"] = secrets
	steps := map[string]any{}
	for id, s := range r.steps {
		outs := map[string]any{}
		for k, val := range s.outputs {
			outs[k] = val
		}
		steps[id] = map[string]any{"outputs": outs, "outcome": s.outcome, "conclusion": s.conclusion}
	}
	v["steps"] = steps
	v["job"] = map[string]any{"status": r.status}
	if r.temp != "" {
		v["runner"] = r.runnerContext()
	}
	return &expr.Context{Values: v, Status: r.status}
}

// jobOutputs evaluates the job's outputs after the last step.
func (r *runner) jobOutputs() map[string]string {
	if len(r.job.Outputs) == 0 {
		return nil
	}
	ectx := r.exprContext(nil)
	out := map[string]string{}
	for k, e := range r.job.Outputs {
		v, err := expr.Interpolate(e, ectx)
		if err != nil {
			r.e.system(agentapi.SetupStep, "warning: outputs.%s: %v", k, err)
			continue
		}
		out[k] = r.mask.Replace(v)
	}
	return out
}

func (r *runner) killGroups() {
	r.pgMu.Lock()
	defer r.pgMu.Unlock()
	for _, pg := range r.pgids {
		_ = killGroup(pg, true)
	}
	r.pgids = nil
}

// insideWorkspace resolves rel against the workspace and refuses a path
// that leaves it (../../etc, an absolute path elsewhere, or a symbolic link
// pointing out).
func insideWorkspace(workspace, rel string) (string, error) {
	ws, err := filepath.Abs(workspace)
	if err != nil {
		return "", err
	}
	p := rel
	if !filepath.IsAbs(p) {
		p = filepath.Join(ws, rel)
	}
	p = filepath.Clean(p)
	if !within(ws, p) {
		return "", fmt.Errorf("%q is outside the workspace %s", rel, ws)
	}
	if real, err := filepath.EvalSymlinks(p); err == nil {
		realWS, err2 := filepath.EvalSymlinks(ws)
		if err2 == nil && !within(realWS, real) {
			return "", fmt.Errorf("%q leads outside the workspace %s (through a symbolic link)", rel, ws)
		}
	}
	return p, nil
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

func stepDisplayName(s agentapi.Step) string {
	switch {
	case s.Name != "":
		return s.Name
	case s.IsCheckout():
		return "Run " + s.Uses
	default:
		return "Run " + firstLine(s.Run)
	}
}

func minutes(m float64) time.Duration { return time.Duration(m * float64(time.Minute)) }

// lockedWriter serialises writes: exec may copy stdout and stderr from two
// goroutines, and each lineWriter keeps its own buffer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
