package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"golang.org/x/sync/errgroup"

	"github.com/solstice-ci/solstice/internal/agentbin"
	"github.com/solstice-ci/solstice/internal/forgejo"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/orchestrator"
	"github.com/solstice-ci/solstice/internal/queue"
	"github.com/solstice-ci/solstice/internal/queue/amqpq"
	"github.com/solstice-ci/solstice/internal/queue/memq"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/store/postgres"
	"github.com/solstice-ci/solstice/internal/store/sqlite"
	"github.com/solstice-ci/solstice/internal/vm/qemu"
)

// orchFlags configure an orchestrator process (serve and orchestrator).
type orchFlags struct {
	imgs        imageFlags
	amqpURL     string
	amqpPrefix  string
	databaseURL string
	dataDir     string
	host        string
	labels      string
	maxJobs     int
	listen      string
	sealingKey  string
	accel       string
	runtimeDir  string
	drain       time.Duration
	network     string
	verbose     bool
	// forgejoRunner is the .runner file of a Forgejo runner daemon that
	// serve runs beside the orchestrator; empty: none.
	forgejoRunner string
	forgejo       forgejoFlags
}

func (f *orchFlags) register(fs *flag.FlagSet, env *cliEnv) {
	f.registerBackbone(fs, env)
	fs.StringVar(&f.host, "host", "", "name of this host in job leases (default: the host name); keep it stable across restarts")
	fs.StringVar(&f.labels, "labels", "", "comma-separated runs-on labels this host serves (default: every catalog label)")
	fs.IntVar(&f.maxJobs, "max-jobs", 1, "jobs (VMs) running at once on this host")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:9464", "address of /metrics and /healthz; empty: none")
	fs.StringVar(&f.accel, "accel", "auto", "auto (KVM when a probe VM works, else TCG), kvm or tcg")
	fs.StringVar(&f.runtimeDir, "runtime-dir", qemu.DefaultRuntimeDir(), "folder for the VMs' sockets, overlays and seeds")
	fs.DurationVar(&f.drain, "drain-timeout", 10*time.Minute, "on SIGTERM, how long running jobs may go on before they are stopped")
	fs.StringVar(&f.network, "network", "", "force the network of every VM: none (no egress at all) or egress; empty: what each job asks")
}

// registerBackbone registers the flags of the queue, the store, the
// sealing key, the images and logging: what every service needs.
func (f *orchFlags) registerBackbone(fs *flag.FlagSet, env *cliEnv) {
	f.imgs.register(fs)
	fs.StringVar(&f.amqpURL, "amqp-url", env.getenv("SOLSTICE_AMQP_URL"), "RabbitMQ URL (env SOLSTICE_AMQP_URL); empty: the in-process queue")
	fs.StringVar(&f.amqpPrefix, "amqp-prefix", envOr(env, "SOLSTICE_AMQP_PREFIX", "solstice"), "first part of every RabbitMQ exchange and queue name (env SOLSTICE_AMQP_PREFIX); setups sharing a broker use different prefixes")
	fs.StringVar(&f.databaseURL, "database-url", env.getenv("SOLSTICE_DATABASE_URL"), "PostgreSQL URL (env SOLSTICE_DATABASE_URL); empty: SQLite in -data-dir")
	fs.StringVar(&f.dataDir, "data-dir", defaultDataDir(env), "folder of the SQLite database")
	fs.StringVar(&f.sealingKey, "sealing-key", env.getenv("SOLSTICE_SEALING_KEY"), "key that opens job secrets, base64 or hex (env SOLSTICE_SEALING_KEY); every daemon and orchestrator of a setup shares it")
	fs.BoolVar(&f.verbose, "v", false, "debug logging")
}

// envOr returns the environment variable name, or def when it is empty.
func envOr(env *cliEnv, name, def string) string {
	if v := env.getenv(name); v != "" {
		return v
	}
	return def
}

func defaultDataDir(env *cliEnv) string {
	if d := env.getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "solstice")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "solstice")
	}
	return "/var/lib/solstice"
}

// backbone is what every service process opens: the queue, the store and
// the sealer of job secrets.
type backbone struct {
	q      queue.Queue
	st     store.Store
	sealer *jobspec.Sealer
	log    *slog.Logger
}

func (b *backbone) Close() {
	if b.q != nil {
		b.q.Close()
	}
	if b.st != nil {
		b.st.Close()
	}
}

// openBackbone opens the queue and store f names: RabbitMQ and PostgreSQL
// when their URLs are set, else the in-process queue and SQLite.
func (f *orchFlags) openBackbone(ctx context.Context, env *cliEnv) (*backbone, error) {
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	b := &backbone{log: slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: level}))}
	var key []byte
	var err error
	switch {
	case f.sealingKey != "":
		if key, err = jobspec.ParseKey(f.sealingKey); err != nil {
			return nil, err
		}
	case f.amqpURL != "":
		return nil, errors.New("a multi-host setup needs -sealing-key (or SOLSTICE_SEALING_KEY) shared by daemons and orchestrators")
	default:
		key = jobspec.NewKey() // one process: the daemons beside us use the same key
	}
	if b.sealer, err = jobspec.NewSealer(key); err != nil {
		return nil, err
	}
	if f.amqpURL != "" {
		b.q, err = amqpq.Open(ctx, f.amqpURL, amqpq.Options{Prefix: f.amqpPrefix, Log: b.log})
	} else {
		b.q = memq.New()
	}
	if err != nil {
		return nil, err
	}
	if f.databaseURL != "" {
		b.st, err = postgres.Open(ctx, f.databaseURL)
	} else {
		if err = os.MkdirAll(f.dataDir, 0o700); err != nil {
			err = fmt.Errorf("creating data folder: %w", err)
		} else {
			b.st, err = sqlite.Open(ctx, filepath.Join(f.dataDir, "solstice.db"))
		}
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// runOrchestrator opens the queue and store f names and runs an
// orchestrator until ctx ends, and beside it the Forgejo runner daemon when
// f names its credentials.
func runOrchestrator(ctx context.Context, env *cliEnv, f *orchFlags) error {
	cat, cache, err := f.imgs.open()
	if err != nil {
		return err
	}
	labels := cat.Labels()
	if f.labels != "" {
		labels = nil
		for _, l := range strings.Split(f.labels, ",") {
			l = strings.TrimSpace(l)
			if _, ok := cat.Lookup(l); !ok {
				return fmt.Errorf("label %q has no image in the catalog", l)
			}
			labels = append(labels, l)
		}
	}
	var fj *forgejo.Daemon
	bb, err := f.openBackbone(ctx, env)
	if err != nil {
		return err
	}
	defer bb.Close()
	q, st, sealer, log := bb.q, bb.st, bb.sealer, bb.log
	if f.forgejoRunner != "" {
		if fj, err = f.forgejo.daemon(bb, f.forgejoRunner, cat); err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	o, err := orchestrator.New(orchestrator.Config{
		Host: f.host, Labels: labels, MaxJobs: f.maxJobs, DrainTimeout: f.drain, Network: f.network,
	}, orchestrator.Deps{
		Queue: q, Store: st, Sealer: sealer, Log: log, Metrics: orchestrator.NewMetrics(reg),
		Backend: qemu.New(qemu.Config{RuntimeDir: f.runtimeDir, Accel: f.accel, Log: log}),
		Images:  orchestrator.CatalogImages{Catalog: cat, Cache: cache},
		Agent:   agentbin.Get,
	})
	if err != nil {
		return err
	}
	if f.listen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if !o.Ready() {
				http.Error(w, "not ready", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		ln, err := net.Listen("tcp", f.listen)
		if err != nil {
			return fmt.Errorf("listening for metrics: %w", err)
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.Info("metrics and health", "addr", ln.Addr().String())
	}
	log.Info("orchestrator starting", "labels", labels, "max_jobs", f.maxJobs,
		"queue", map[bool]string{true: "rabbitmq", false: "in-process"}[f.amqpURL != ""],
		"store", map[bool]string{true: "postgresql", false: "sqlite"}[f.databaseURL != ""])
	if fj == nil {
		return o.Run(ctx)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return o.Run(gctx) })
	g.Go(func() error { return fj.Run(gctx) })
	return g.Wait()
}

func serveCmd() command {
	return command{"everything in one process: queue and store (embedded unless URLs are given) and the orchestrator", func(ctx context.Context, env *cliEnv, args []string) error {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		var f orchFlags
		f.register(fs, env)
		fs.StringVar(&f.forgejoRunner, "forgejo-runner", env.getenv("SOLSTICE_FORGEJO_RUNNER"), "the .runner file of `solstice forgejo register` (env SOLSTICE_FORGEJO_RUNNER): run the Forgejo runner daemon in this process too")
		f.forgejo.register(fs)
		if err := fs.Parse(args); err != nil {
			return exitError{2}
		}
		return runOrchestrator(ctx, env, &f)
	}}
}

func orchestratorCmd() command {
	return command{"the orchestrator alone, for many hosts on RabbitMQ and PostgreSQL", func(ctx context.Context, env *cliEnv, args []string) error {
		fs := flag.NewFlagSet("orchestrator", flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		var f orchFlags
		f.register(fs, env)
		if err := fs.Parse(args); err != nil {
			return exitError{2}
		}
		if f.amqpURL == "" || f.databaseURL == "" {
			return errors.New("the orchestrator alone needs -amqp-url and -database-url (use solstice serve for one host)")
		}
		return runOrchestrator(ctx, env, &f)
	}}
}
