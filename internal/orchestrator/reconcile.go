package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/vm"
)

// errRestarted is the message of jobs a restart interrupted.
var errRestarted = errors.New("the orchestrator restarted while the job was running; the job was stopped and its VM destroyed")

// reconcile brings the store and the host's VMs in line after a start:
// jobs this host was running end as errored, every VM an earlier process of
// this host left is reaped (unless another live host owns its job), and
// jobs this host had accepted but not started are started.
func (o *Orchestrator) reconcile(ctx, jobsCtx context.Context) error {
	live, err := o.deps.Store.ListJobs(ctx, store.Filter{Host: o.cfg.Host, States: []store.State{store.Provisioning, store.Running}})
	if err != nil {
		return fmt.Errorf("listing this host's running jobs: %w", err)
	}
	for _, j := range live {
		o.endLost(ctx, j, errRestarted.Error())
	}
	reaped, err := o.deps.Backend.Reap(ctx, func(h vm.Handle) bool { return o.ownedElsewhere(ctx, h.JobID) })
	for _, h := range reaped {
		o.log.Info("reaped VM of an earlier process", "job_id", h.JobID, "pid", h.Pid)
	}
	if err != nil {
		return fmt.Errorf("reaping VMs: %w", err)
	}
	queued, err := o.deps.Store.ListJobs(ctx, store.Filter{Host: o.cfg.Host, States: []store.State{store.Queued}})
	if err != nil {
		return fmt.Errorf("listing this host's accepted jobs: %w", err)
	}
	for _, j := range queued {
		o.restartQueued(ctx, jobsCtx, j)
	}
	return nil
}

// ownedElsewhere reports whether job id is live and held by another host
// with an unexpired lease: its VM must not be reaped.
func (o *Orchestrator) ownedElsewhere(ctx context.Context, id string) bool {
	j, err := o.deps.Store.GetJob(ctx, id)
	if err != nil {
		return false
	}
	return !j.State.Terminal() && j.Host != "" && j.Host != o.cfg.Host && time.Now().Before(j.LeaseExpiresAt)
}

// endLost claims a live job whose runner is gone and ends it as errored.
func (o *Orchestrator) endLost(ctx context.Context, j store.Job, msg string) {
	log := o.log.With("job_id", j.ID)
	lease, err := o.deps.Store.Claim(ctx, j.ID, o.cfg.Host, o.cfg.LeaseTTL)
	if err != nil {
		log.Warn("claiming an interrupted job", "err", err)
		return
	}
	req, err := jobspec.DecodeJobRequest(j.Request)
	if err != nil {
		log.Error("stored job is unreadable", "err", err)
		return
	}
	r := &run{o: o, lease: lease, req: req, log: log, cancel: func(error) {}}
	r.ev = newEmitter(o, req)
	r.finish(ctx, j.State, agentOutcome{}, errored("%s", msg), nil)
}

// restartQueued starts an accepted job again when there is room; otherwise
// it stays queued for the rescue loop.
func (o *Orchestrator) restartQueued(ctx, jobsCtx context.Context, j store.Job) {
	req, err := jobspec.DecodeJobRequest(j.Request)
	if err != nil {
		o.log.Error("stored job is unreadable", "job_id", j.ID, "err", err)
		return
	}
	if o.isRunning(j.ID) || !o.slots.take(req.RunsOn) {
		return
	}
	lease, err := o.deps.Store.Claim(ctx, j.ID, o.cfg.Host, o.cfg.LeaseTTL)
	if err != nil {
		o.slots.release(req.RunsOn)
		return
	}
	o.log.Info("starting an accepted job again", "job_id", j.ID)
	o.start(jobsCtx, lease, req, false)
}

// rescueLoop periodically takes over jobs of labels this host serves whose
// host stopped renewing its lease: accepted jobs are started here, running
// ones end as errored (their VM died with their host).
func (o *Orchestrator) rescueLoop(ctx, jobsCtx context.Context) {
	t := time.NewTicker(o.cfg.RescueInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		jobs, err := o.deps.Store.ListJobs(ctx, store.Filter{States: []store.State{store.Queued, store.Provisioning, store.Running}})
		if err != nil {
			o.log.Warn("listing jobs to rescue", "err", err)
			continue
		}
		now := time.Now()
		for _, j := range jobs {
			if !slices.Contains(o.cfg.Labels, j.Label) || o.isRunning(j.ID) {
				continue
			}
			if j.Host != "" && now.Before(j.LeaseExpiresAt) {
				continue // its host is alive
			}
			if j.State == store.Queued {
				o.restartQueued(ctx, jobsCtx, j)
				continue
			}
			msg := fmt.Sprintf("host %s stopped renewing its lease while running the job; the job was stopped", j.Host)
			o.endLost(ctx, j, msg)
		}
	}
}

// consumeCancels stops local jobs named by Cancel messages, and marks jobs
// this host does not run in the store.
func (o *Orchestrator) consumeCancels(ctx context.Context) error {
	retry := newBackoff(500*time.Millisecond, 30*time.Second)
	for ctx.Err() == nil {
		ch, err := o.deps.Queue.ConsumeCancels(ctx, o.cfg.Host)
		if err != nil {
			o.log.Warn("consuming cancels", "err", err)
			if !sleepCtx(ctx, retry.next()) {
				return nil
			}
			continue
		}
		retry.reset()
		for d := range ch {
			c, err := jobspec.DecodeCancel(d.Body())
			if err != nil {
				o.log.Error("dropping invalid cancel message", "err", err)
				_ = d.Nack(false)
				continue
			}
			o.handleCancel(ctx, c)
			_ = d.Ack()
		}
	}
	return nil
}

func (o *Orchestrator) handleCancel(ctx context.Context, c *jobspec.Cancel) {
	o.mu.Lock()
	r := o.running[c.JobID]
	o.mu.Unlock()
	if r != nil {
		o.log.Info("cancelling job", "job_id", c.JobID, "reason", c.Reason)
		if _, err := o.deps.Store.RequestCancel(ctx, c.JobID, c.Reason); err != nil {
			o.log.Warn("recording cancel", "job_id", c.JobID, "err", err)
		}
		r.cancel(&cancelCause{reason: c.Reason})
		return
	}
	before, err := o.deps.Store.GetJob(ctx, c.JobID)
	if err != nil {
		return // not accepted anywhere yet, or another store; nothing to do here
	}
	after, err := o.deps.Store.RequestCancel(ctx, c.JobID, c.Reason)
	if err != nil || before.State != store.Queued || after.State != store.Cancelled || !slices.Contains(o.cfg.Labels, after.Label) {
		return
	}
	// A job accepted but not started was cancelled in the store: report it.
	req, err := jobspec.DecodeJobRequest(after.Request)
	if err != nil {
		return
	}
	e := newEmitter(o, req)
	msg := (&cancelCause{reason: c.Reason}).Error()
	_ = e.emit(ctx, jobspec.Event{Kind: jobspec.EventJobFinished, Step: jobspec.SetupStep, Result: jobspec.ResultCancelled, Message: msg})
}
