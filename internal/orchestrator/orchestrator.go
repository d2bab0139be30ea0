// Package orchestrator runs jobs: it consumes JobRequests for the labels its
// host serves, persists each in the store before acking it, boots a fresh VM,
// runs the guest agent in it over SSH, turns the agent's event lines into
// Events for the daemon that published the job, and destroys the VM.
//
// Goroutines of a running Orchestrator (all joined by Run):
//
//	consume    one consumer over the labels with room, prefetch = free slots;
//	           restarted whenever the free capacity changes
//	job        one per running job: provision → agent → finish (+ its event pump)
//	cancels    Cancel messages → cancel a local job or mark it in the store
//	heartbeat  extends the leases of this host's jobs
//	rescue     takes over jobs of hosts whose leases expired
//
// Delivery: a job message is acked only after the job is in the store and
// this host holds its lease, and before the VM boots, so no delivery stays
// unacked for the length of a job. A restarted orchestrator ends the jobs
// it was running with a clear error, reaps their VMs and starts the jobs it
// had accepted but not started.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/vm"
	"github.com/solstice-ci/solstice/internal/vm/image"
)

// Config holds the settings of one orchestrator.
type Config struct {
	// Host names this orchestrator in leases; it must be stable across
	// restarts of the same host, so a restarted process reclaims its jobs.
	Host string
	// Labels are the runs-on labels this host serves.
	Labels []string
	// MaxJobs bounds the jobs running at once on this host (default 1).
	MaxJobs int
	// LabelLimits bounds the jobs of one label at once (0 = only MaxJobs).
	LabelLimits map[string]int

	LeaseTTL          time.Duration // default 60s
	HeartbeatInterval time.Duration // default LeaseTTL/4
	RescueInterval    time.Duration // default 30s
	// BootTimeout overrides the image's boot timeout when > 0.
	BootTimeout time.Duration
	// JobTimeout applies to jobs that set none (default 6h).
	JobTimeout time.Duration
	// LogFlushInterval bounds how long a log line waits before it is
	// published (default and maximum 250ms).
	LogFlushInterval time.Duration
	// DrainTimeout is how long Run waits for running jobs after its ctx
	// ends before it stops them (0 = stop them at once).
	DrainTimeout time.Duration
	// Network, when set (jobspec.NetworkNone), is the network mode of
	// every VM of this host whatever the job asks: a host whose guests
	// must never reach out. Empty: each job's own mode.
	Network string
	// LocalBundleDir, when set, lets jobs from platform "local" (solstice
	// exec) ship a git bundle from inside this folder into the VM.
	LocalBundleDir string
}

// network is the network mode of a job's VM: the host's forced mode, else
// the job's.
func (o *Orchestrator) network(job string) string {
	if o.cfg.Network != "" {
		return o.cfg.Network
	}
	return job
}

func (c *Config) setDefaults() error {
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("orchestrator config: no host name: %w", err)
		}
		c.Host = h
	}
	if len(c.Labels) == 0 {
		return errors.New("orchestrator config: no labels to serve")
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = 1
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 60 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = c.LeaseTTL / 4
	}
	if c.RescueInterval <= 0 {
		c.RescueInterval = 30 * time.Second
	}
	if c.JobTimeout <= 0 {
		c.JobTimeout = 6 * time.Hour
	}
	switch c.Network {
	case "", jobspec.NetworkNone, jobspec.NetworkEgress:
	default:
		return fmt.Errorf("orchestrator config: network %q, want %q or %q", c.Network, jobspec.NetworkNone, jobspec.NetworkEgress)
	}
	if c.LogFlushInterval <= 0 || c.LogFlushInterval > 250*time.Millisecond {
		c.LogFlushInterval = 250 * time.Millisecond
	}
	return nil
}

// Images finds the image of a label: the catalog entry and its files in
// the local cache, pulling or building it when needed (progress goes to the
// job's log).
type Images interface {
	Resolve(ctx context.Context, label string, progress io.Writer) (image.Entry, image.Local, error)
}

// CatalogImages resolves labels through a catalog and a cache.
type CatalogImages struct {
	Catalog *image.Catalog
	Cache   *image.Cache
}

// Resolve looks label up and makes sure its image is in the cache.
func (c CatalogImages) Resolve(ctx context.Context, label string, progress io.Writer) (image.Entry, image.Local, error) {
	e, ok := c.Catalog.Lookup(label)
	if !ok {
		return image.Entry{}, image.Local{}, fmt.Errorf("no image for label %q in the catalog", label)
	}
	l, err := c.Cache.Ensure(ctx, e, progress)
	if err != nil {
		return image.Entry{}, image.Local{}, err
	}
	return e, l, nil
}

// Deps are the parts the orchestrator works with.
type Deps struct {
	Queue   queue.Queue
	Store   store.Store
	Backend vm.Backend
	Images  Images
	// Agent returns the solstice-runner binary for a guest OS/arch.
	Agent  func(goos, goarch string) ([]byte, error)
	Sealer *jobspec.Sealer
	Log    *slog.Logger
	// Metrics receives the orchestrator's metrics; nil means none.
	Metrics *Metrics
}

// Orchestrator runs jobs. Create it with New, then call Run once.
type Orchestrator struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	met  *Metrics

	slots *slots

	mu      sync.Mutex
	running map[string]*run // job id → run
	jobs    sync.WaitGroup
	ready   bool
}

// New checks the configuration and the dependencies.
func New(cfg Config, deps Deps) (*Orchestrator, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	switch {
	case deps.Queue == nil:
		return nil, errors.New("orchestrator: no queue")
	case deps.Store == nil:
		return nil, errors.New("orchestrator: no store")
	case deps.Backend == nil:
		return nil, errors.New("orchestrator: no VM backend")
	case deps.Images == nil:
		return nil, errors.New("orchestrator: no image source")
	case deps.Agent == nil:
		return nil, errors.New("orchestrator: no agent binaries")
	case deps.Sealer == nil:
		return nil, errors.New("orchestrator: no sealer")
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	met := deps.Metrics
	if met == nil {
		met = NewMetrics(nil)
	}
	return &Orchestrator{
		cfg:     cfg,
		deps:    deps,
		log:     deps.Log.With("host", cfg.Host),
		met:     met,
		slots:   newSlots(cfg.MaxJobs, cfg.LabelLimits),
		running: map[string]*run{},
	}, nil
}

// Ready reports whether the orchestrator has reconciled and consumes jobs
// (for /healthz).
func (o *Orchestrator) Ready() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ready
}

// Run reconciles the store with the VMs left by an earlier process, then
// takes jobs until ctx ends. It then stops taking jobs, waits up to
// DrainTimeout for the running ones, stops the rest (they end as errored,
// with a message saying why) and returns. It returns an error only when it
// cannot start.
func (o *Orchestrator) Run(ctx context.Context) error {
	// Jobs run on a context of their own, so the end of ctx (SIGTERM) stops
	// intake first and jobs only after the drain timeout.
	jobsCtx, stopJobs := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopJobs(errors.New("orchestrator stopped"))

	if err := o.deps.Queue.DeclareLabels(ctx, o.cfg.Labels); err != nil {
		return fmt.Errorf("declaring job queues for %v: %w", o.cfg.Labels, err)
	}
	if err := o.reconcile(ctx, jobsCtx); err != nil {
		return fmt.Errorf("reconciling after start: %w", err)
	}
	o.mu.Lock()
	o.ready = true
	o.mu.Unlock()
	o.log.Info("orchestrator ready", "labels", o.cfg.Labels, "max_jobs", o.cfg.MaxJobs)

	// The heartbeat outlives intake: leases of draining jobs must stay alive.
	hbCtx, stopHeartbeat := context.WithCancel(context.WithoutCancel(ctx))
	hbDone := make(chan struct{})
	go func() { defer close(hbDone); o.heartbeat(hbCtx) }()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return o.consume(gctx, jobsCtx) })
	g.Go(func() error { return o.consumeCancels(gctx) })
	g.Go(func() error { o.rescueLoop(gctx, jobsCtx); return nil })
	err := g.Wait()

	o.mu.Lock()
	o.ready = false
	o.mu.Unlock()
	o.drain(stopJobs)
	stopHeartbeat()
	<-hbDone
	return err
}

// drain waits for running jobs up to DrainTimeout, then stops them.
func (o *Orchestrator) drain(stopJobs context.CancelCauseFunc) {
	done := make(chan struct{})
	go func() { o.jobs.Wait(); close(done) }()
	if n := o.runningCount(); n > 0 {
		o.log.Info("draining running jobs", "jobs", n, "timeout", o.cfg.DrainTimeout)
	}
	select {
	case <-done:
		return
	case <-time.After(o.cfg.DrainTimeout):
	}
	stopJobs(errShutdown)
	<-done
}

var errShutdown = errors.New("the orchestrator shut down before the job finished")

func (o *Orchestrator) runningCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.running)
}

// heartbeat extends this host's leases until ctx ends.
func (o *Orchestrator) heartbeat(ctx context.Context) {
	t := time.NewTicker(o.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := o.deps.Store.Heartbeat(ctx, o.cfg.Host, o.cfg.LeaseTTL); err != nil && ctx.Err() == nil {
			o.log.Warn("extending leases", "err", err)
		}
	}
}
