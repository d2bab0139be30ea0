package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/vm"
)

// run is one job being run by this host.
type run struct {
	o      *Orchestrator
	lease  store.Lease
	req    *jobspec.JobRequest
	cancel context.CancelCauseFunc
	log    *slog.Logger
	ev     *emitter
}

// errLeaseLost means another host took the job over: this host must stop
// touching it and leave the final report to the new holder.
var errLeaseLost = errors.New("lease lost to another host")

// jobError is a failure of the job path (not of the job's own steps) with
// the state and result the job ends in.
type jobError struct {
	state  store.State
	result string
	msg    string
}

func (e *jobError) Error() string { return e.msg }

func errored(format string, args ...any) error {
	return &jobError{state: store.Errored, result: jobspec.ResultErrored, msg: fmt.Sprintf(format, args...)}
}

// agentOutcome is what the agent reported at the end of the job.
type agentOutcome struct {
	finished bool
	result   string
	exitCode int
	outputs  map[string]string
}

// execute runs the job from its lease to its final state. fresh is false for
// jobs started again after a restart.
func (r *run) execute(ctx context.Context, fresh bool) {
	r.ev = newEmitter(r.o, r.req)
	// Final reports go out even when ctx is cancelled.
	final := context.WithoutCancel(ctx)
	if fresh {
		if err := r.ev.emit(final, jobspec.Event{Kind: jobspec.EventAccepted, Step: jobspec.SetupStep,
			Message: fmt.Sprintf("accepted by %s", r.o.cfg.Host)}); err != nil {
			r.log.Warn("reporting accepted", "err", err)
		}
	}
	from := store.Queued
	outcome, err := r.provisionAndRun(ctx, &from)
	if errors.Is(err, errLeaseLost) {
		r.log.Warn("stopping job: another host took it over")
		return
	}
	r.finish(final, from, outcome, err, context.Cause(ctx))
}

// provisionAndRun boots the VM and runs the agent; *from tracks the job's
// state in the store as it moves.
func (r *run) provisionAndRun(ctx context.Context, from *store.State) (agentOutcome, error) {
	o := r.o
	if j, err := o.deps.Store.GetJob(ctx, r.req.JobID); err == nil && j.CancelRequested {
		r.cancel(&cancelCause{reason: j.CancelReason})
		return agentOutcome{}, ctx.Err()
	}
	if err := r.transition(ctx, *from, store.Provisioning, store.Update{}); err != nil {
		return agentOutcome{}, err
	}
	*from = store.Provisioning
	timeout := o.cfg.JobTimeout
	if r.req.TimeoutMinutes > 0 {
		timeout = time.Duration(r.req.TimeoutMinutes * float64(time.Minute))
	}
	ctx, stop := context.WithTimeoutCause(ctx, timeout, &timeoutCause{timeout})
	defer stop()

	_ = r.ev.emit(ctx, jobspec.Event{Kind: jobspec.EventVMBooting, Step: jobspec.SetupStep,
		Message: fmt.Sprintf("booting a VM for %s on %s", r.req.RunsOn, o.cfg.Host)})
	sys := r.ev.systemWriter(ctx)
	fmt.Fprintf(sys, "Solstice CI: job %s on host %s, image %s\n", r.req.JobID, o.cfg.Host, r.req.RunsOn)
	entry, local, err := o.deps.Images.Resolve(ctx, r.req.RunsOn, sys)
	if err != nil {
		return agentOutcome{}, r.ctxOr(ctx, errored("preparing the image of %s: %v", r.req.RunsOn, err))
	}
	spec := vm.Spec{JobID: r.req.JobID, Image: entry, BaseImage: local.Disk, Kernel: local.Kernel, Initrd: local.Initrd,
		Network: o.network(r.req.Network), BootTimeout: o.cfg.BootTimeout}
	m, err := o.deps.Backend.Create(ctx, spec)
	if err != nil {
		return agentOutcome{}, r.ctxOr(ctx, errored("creating the VM: %v", err))
	}
	defer r.destroy(m)
	bootStart := time.Now()
	if err := m.Start(ctx); err != nil {
		return agentOutcome{}, r.ctxOr(ctx, errored("starting the VM: %v", err))
	}
	if err := r.saveVM(ctx, m); err != nil {
		return agentOutcome{}, err
	}
	if err := m.WaitReady(ctx); err != nil {
		return agentOutcome{}, r.ctxOr(ctx, errored("the VM did not become reachable: %v", err))
	}
	boot := time.Since(bootStart)
	o.met.BootSeconds.Observe(boot.Seconds())
	fmt.Fprintf(sys, "VM is up after %.1fs (%s/%s)\n", boot.Seconds(), m.GuestOS(), m.GuestArch())
	if err := r.transition(ctx, store.Provisioning, store.Running, store.Update{}); err != nil {
		return agentOutcome{}, err
	}
	*from = store.Running
	return r.runAgent(ctx, m)
}

// runAgent uploads the agent and the job's files and runs the job.
func (r *run) runAgent(ctx context.Context, m vm.Machine) (agentOutcome, error) {
	var homeOut bytes.Buffer
	if code, err := m.Exec(ctx, "cd && pwd", nil, &homeOut, io.Discard); err != nil || code != 0 {
		return agentOutcome{}, r.ctxOr(ctx, errored("finding the guest's home folder: exit %d: %v", code, err))
	}
	home := strings.TrimSpace(homeOut.String())
	if !strings.HasPrefix(home, "/") {
		return agentOutcome{}, errored("the guest's home folder %q is not an absolute path", home)
	}
	binary, err := r.o.deps.Agent(m.GuestOS(), m.GuestArch())
	if err != nil {
		return agentOutcome{}, errored("no agent for %s/%s: %v", m.GuestOS(), m.GuestArch(), err)
	}
	agentPath := home + "/.solstice/solstice-runner"
	if err := m.CopyIn(ctx, bytes.NewReader(binary), agentPath, 0o755); err != nil {
		return agentOutcome{}, r.ctxOr(ctx, errored("uploading the agent: %v", err))
	}
	jf, err := r.jobFile(ctx, m, home)
	if err != nil {
		return agentOutcome{}, err
	}
	cmd := fmt.Sprintf("SOLSTICE_JOB_FILE=- SOLSTICE_WORKDIR=%s %s --events=stdout", shellQuote(home+"/work"), shellQuote(agentPath))
	pr, pw := io.Pipe()
	p := newPump(r)
	pumpDone := make(chan agentOutcome, 1)
	go func() { pumpDone <- p.run(ctx, pr) }()
	stderr := &tailBuffer{max: 8 << 10}
	code, execErr := m.Exec(ctx, cmd, bytes.NewReader(jf), pw, stderr)
	_ = pw.Close()
	outcome := <-pumpDone
	if ctx.Err() != nil {
		return outcome, ctx.Err()
	}
	if execErr != nil {
		return outcome, errored("running the agent: %v; its last output: %s", execErr, stderr.String())
	}
	if !outcome.finished {
		return outcome, errored("the agent exited with code %d without finishing the job; its last output: %s", code, stderr.String())
	}
	outcome.exitCode = code
	return outcome, nil
}

// jobFile builds the agent's job file, with the secrets opened, and uploads
// the repository bundle of local jobs.
func (r *run) jobFile(ctx context.Context, m vm.Machine, home string) ([]byte, error) {
	var sec jobspec.Secrets
	if err := r.o.deps.Sealer.Open(r.req.JobID, r.req.Secrets, &sec); err != nil {
		return nil, errored("opening the job's secrets: %v", err)
	}
	checkout := r.req.Checkout
	checkout.Token = sec.Token
	if checkout.Bundle != "" {
		guestPath, err := r.uploadBundle(ctx, m, home, checkout.Bundle)
		if err != nil {
			return nil, err
		}
		checkout.Bundle = guestPath
	}
	jf := agentapi.JobFile{
		Version:        agentapi.JobFileVersion,
		JobID:          r.req.JobID,
		RepoURL:        r.req.RepoURL,
		CommitSHA:      r.req.CommitSHA,
		Ref:            r.req.Ref,
		Checkout:       checkout,
		Env:            r.req.Env,
		Secrets:        sec.Secrets,
		Mask:           sec.Mask,
		Steps:          r.req.Steps,
		Contexts:       r.req.Contexts,
		Outputs:        r.req.Outputs,
		TimeoutMinutes: r.req.TimeoutMinutes,
	}
	data, err := yaml.Marshal(&jf)
	if err != nil {
		return nil, errored("writing the job file: %v", err)
	}
	return data, nil
}

// uploadBundle copies a local job's git bundle into the guest. Only jobs of
// solstice exec may ship one, and only from the folder it configured.
func (r *run) uploadBundle(ctx context.Context, m vm.Machine, home, hostPath string) (string, error) {
	dir := r.o.cfg.LocalBundleDir
	if r.req.Source.Platform != jobspec.PlatformLocal || dir == "" {
		return "", errored("checkout.bundle is only allowed for local jobs of solstice exec")
	}
	rel, err := filepath.Rel(dir, filepath.Clean(hostPath))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return "", errored("checkout.bundle %s is outside %s", hostPath, dir)
	}
	f, err := os.Open(hostPath)
	if err != nil {
		return "", errored("reading the repository bundle: %v", err)
	}
	defer f.Close()
	guestPath := home + "/.solstice/repo.bundle"
	if err := m.CopyIn(ctx, f, guestPath, 0o600); err != nil {
		return "", r.ctxOr(ctx, errored("uploading the repository bundle: %v", err))
	}
	return guestPath, nil
}

// saveVM records the machine's handle, so a restarted orchestrator can find
// and reap it.
func (r *run) saveVM(ctx context.Context, m vm.Machine) error {
	h, err := json.Marshal(m.Handle())
	if err != nil {
		return errored("recording the VM: %v", err)
	}
	err = r.o.deps.Store.SetVM(ctx, r.lease, h)
	if errors.Is(err, store.ErrConflict) {
		return errLeaseLost
	}
	if err != nil {
		return r.ctxOr(ctx, errored("recording the VM: %v", err))
	}
	return nil
}

// destroy removes the VM whatever happened to the job.
func (r *run) destroy(m vm.Machine) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Destroy(ctx); err != nil {
		r.log.Error("destroying VM", "err", err)
	}
}

func (r *run) transition(ctx context.Context, from, to store.State, u store.Update) error {
	err := r.o.deps.Store.Transition(ctx, r.lease, from, to, u)
	if errors.Is(err, store.ErrConflict) {
		return errLeaseLost
	}
	if err != nil {
		return r.ctxOr(ctx, errored("recording state %s: %v", to, err))
	}
	return nil
}

// ctxOr returns ctx's error when ctx ended (the real reason the step
// failed), else err.
func (r *run) ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// cancelCause is the cause of a job's context when a user cancelled it.
type cancelCause struct{ reason string }

func (c *cancelCause) Error() string {
	if c.reason == "" {
		return "the job was cancelled"
	}
	return "the job was cancelled: " + c.reason
}

// timeoutCause is the cause when the job ran past its timeout.
type timeoutCause struct{ d time.Duration }

func (t *timeoutCause) Error() string {
	return fmt.Sprintf("the job exceeded its timeout of %s", t.d)
}

// finish records the final state and reports it. err is the job path's
// failure, cause the cause of ctx if it ended.
func (r *run) finish(ctx context.Context, from store.State, out agentOutcome, err error, cause error) {
	state, result, msg := r.decide(out, err, cause)
	if msg != "" {
		_ = r.ev.emit(ctx, jobspec.Event{Kind: jobspec.EventError, Step: jobspec.SetupStep, Message: msg})
	}
	_ = r.ev.emit(ctx, jobspec.Event{Kind: jobspec.EventJobFinished, Step: jobspec.SetupStep,
		Result: result, ExitCode: out.exitCode, Outputs: out.outputs, Message: msg})
	// Move the state even from queued/provisioning (cancelled, errored).
	u := store.Update{Result: &result, Message: &msg}
	if terr := r.o.deps.Store.Transition(ctx, r.lease, from, state, u); terr != nil {
		r.log.Warn("recording the final state", "state", state, "err", terr)
	}
	r.o.met.JobsFinished.WithLabelValues(result).Inc()
	r.log.Info("job finished", "result", result, "message", msg)
}

// decide maps how the job ended to its final state, result and message.
func (r *run) decide(out agentOutcome, err, cause error) (store.State, string, string) {
	var je *jobError
	var cc *cancelCause
	var tc *timeoutCause
	switch {
	case errors.As(cause, &cc):
		return store.Cancelled, jobspec.ResultCancelled, cc.Error()
	case errors.As(cause, &tc):
		return store.Failed, jobspec.ResultFailure, tc.Error()
	case cause != nil:
		return store.Errored, jobspec.ResultErrored, cause.Error()
	case errors.As(err, &je):
		return je.state, je.result, je.msg
	case err != nil:
		return store.Errored, jobspec.ResultErrored, err.Error()
	}
	switch out.result {
	case jobspec.ResultSuccess:
		return store.Succeeded, jobspec.ResultSuccess, ""
	case jobspec.ResultCancelled:
		return store.Cancelled, jobspec.ResultCancelled, "the job was cancelled in the guest"
	default:
		return store.Failed, jobspec.ResultFailure, ""
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	s := strings.TrimSpace(strings.ToValidUTF8(string(t.buf), "\uFFFD"))
	if s == "" {
		return "(none)"
	}
	return s
}
