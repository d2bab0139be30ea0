package orchestrator

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/store"
)

// consume takes jobs while ctx lives. It consumes only the labels that have
// room, with a prefetch of the free slots, and re-subscribes when the labels
// with room change, when room grows past that prefetch, and when no room is
// left, so no delivery waits unacked for a slot. While this host takes jobs
// the room shrinks by one per job without a re-subscribe (that cost one
// consumer restart, and the return of every prefetched delivery, per job):
// the slot taken in accept guards the limits, and when the last slot goes
// the deliveries still buffered return to the queue.
func (o *Orchestrator) consume(ctx, jobsCtx context.Context) error {
	retry := newBackoff(500*time.Millisecond, 30*time.Second)
	for ctx.Err() == nil {
		labels, free, changed := o.slots.room(o.cfg.Labels)
		if free == 0 {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		ch, err := o.deps.Queue.ConsumeJobs(cctx, labels, free)
		if err != nil {
			cancel()
			o.log.Warn("consuming jobs", "labels", labels, "err", err)
			if !sleepCtx(ctx, retry.next()) {
				return nil
			}
			continue
		}
		retry.reset()
		o.takeDeliveries(cctx, jobsCtx, ch, labels, free, changed)
		cancel()
		// Deliveries not taken return to the queue for another host.
		for d := range ch {
			_ = d.Nack(true)
		}
	}
	return nil
}

// takeDeliveries accepts deliveries until the consumer ends, the labels with
// room change, the room grows past free (the consumer's prefetch) or no room
// is left.
func (o *Orchestrator) takeDeliveries(ctx, jobsCtx context.Context, ch <-chan queue.Delivery, labels []string, free int, changed <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			var l []string
			var f int
			l, f, changed = o.slots.room(o.cfg.Labels)
			if f == 0 || f > free || !slices.Equal(l, labels) {
				return
			}
		case d, ok := <-ch:
			if !ok {
				return
			}
			o.accept(ctx, jobsCtx, d)
		}
	}
}

// accept persists a delivered job, takes its lease, acks the delivery and
// starts the job. Anything that cannot be persisted goes back to the queue.
func (o *Orchestrator) accept(ctx, jobsCtx context.Context, d queue.Delivery) {
	req, err := jobspec.DecodeJobRequest(d.Body())
	if err != nil {
		// A message that can never run is dropped (dead-lettered by the
		// broker); redelivering it would not make it valid.
		o.log.Error("dropping invalid job message", "err", err)
		o.met.JobsInvalid.Inc()
		_ = d.Nack(false)
		return
	}
	log := o.log.With("job_id", req.JobID, "label", req.RunsOn)
	if !o.slots.take(req.RunsOn) {
		_ = d.Nack(true)
		return
	}
	started := false
	defer func() {
		if !started {
			o.slots.release(req.RunsOn)
		}
	}()
	if o.isRunning(req.JobID) {
		_ = d.Ack()
		return
	}
	inserted, err := o.deps.Store.InsertJob(ctx, req.JobID, req.RunsOn, d.Body())
	if err != nil {
		log.Warn("persisting job; it returns to the queue", "err", err)
		_ = d.Nack(true)
		return
	}
	if !inserted {
		j, err := o.deps.Store.GetJob(ctx, req.JobID)
		if err != nil {
			log.Warn("reading redelivered job; it returns to the queue", "err", err)
			_ = d.Nack(true)
			return
		}
		if j.State != store.Queued {
			// Finished, or running on some host (the rescue loop takes
			// over jobs whose host died): the message is a duplicate.
			log.Debug("ignoring redelivered job", "state", j.State)
			_ = d.Ack()
			return
		}
	}
	lease, err := o.deps.Store.Claim(ctx, req.JobID, o.cfg.Host, o.cfg.LeaseTTL)
	if errors.Is(err, store.ErrConflict) {
		log.Debug("job is held by another host")
		_ = d.Ack()
		return
	}
	if err != nil {
		log.Warn("claiming job; it returns to the queue", "err", err)
		_ = d.Nack(true)
		return
	}
	if err := d.Ack(); err != nil {
		// The channel was lost after the job was persisted: the message
		// comes again and is absorbed by the job id. The lease is ours.
		log.Info("acking job after persisting it", "err", err)
	}
	o.met.JobsAccepted.Inc()
	started = true
	o.start(jobsCtx, lease, req, inserted)
}

func (o *Orchestrator) isRunning(jobID string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.running[jobID]
	return ok
}

// start runs the job in a goroutine of its own; the slot taken for it is
// released when it ends.
func (o *Orchestrator) start(jobsCtx context.Context, lease store.Lease, req *jobspec.JobRequest, fresh bool) {
	ctx, cancel := context.WithCancelCause(jobsCtx)
	r := &run{o: o, lease: lease, req: req, cancel: cancel, log: o.log.With("job_id", req.JobID, "label", req.RunsOn)}
	o.mu.Lock()
	o.running[req.JobID] = r
	o.mu.Unlock()
	o.jobs.Add(1)
	o.met.JobsRunning.Inc()
	go func() {
		defer func() {
			cancel(nil)
			o.mu.Lock()
			delete(o.running, req.JobID)
			o.mu.Unlock()
			o.met.JobsRunning.Dec()
			o.slots.release(req.RunsOn)
			o.jobs.Done()
		}()
		r.execute(ctx, fresh)
	}()
}

// backoff is a capped exponential delay with jitter-free doubling.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// sleepCtx sleeps d or until ctx ends; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
