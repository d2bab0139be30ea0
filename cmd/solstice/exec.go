package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/agentbin"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/localrun"
	"github.com/solstice-ci/solstice/internal/orchestrator"
	"github.com/solstice-ci/solstice/internal/queue/memq"
	"github.com/solstice-ci/solstice/internal/store/sqlite"
	"github.com/solstice-ci/solstice/internal/vm/qemu"
	"github.com/solstice-ci/solstice/internal/workflow"
)

// kvFlag collects repeated k=v flags.
type kvFlag map[string]string

func (f kvFlag) String() string { return "" }
func (f kvFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	f[k] = v
	return nil
}

// listFlag collects repeated values.
type listFlag []string

func (f *listFlag) String() string     { return strings.Join(*f, ",") }
func (f *listFlag) Set(s string) error { *f = append(*f, s); return nil }

func execCmd() command {
	return command{"run a workflow file locally, one fresh VM per job and matrix leg", func(ctx context.Context, env *cliEnv, args []string) error {
		fs := flag.NewFlagSet("exec", flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		var imgs imageFlags
		imgs.register(fs)
		wfPath := fs.String("w", ".github/workflows/ci.yml", "workflow file")
		var jobs listFlag
		fs.Var(&jobs, "j", "run only this job (and the jobs it needs); repeatable")
		matrix, images, vars := kvFlag{}, kvFlag{}, kvFlag{}
		fs.Var(matrix, "matrix", "keep only matrix legs with k=v; repeatable")
		fs.Var(images, "image", "run runs-on LABEL on catalog image IMAGE (LABEL=IMAGE); repeatable")
		fs.Var(vars, "var", "a vars context value (NAME=VALUE); repeatable")
		var secretNames listFlag
		fs.Var(&secretNames, "s", "pass the environment variable NAME as secret NAME; repeatable")
		network := fs.String("network", "", "egress (default; outbound allowed, host loopback closed) or none")
		accel := fs.String("accel", "auto", "auto (KVM when a probe VM works, else TCG), kvm or tcg")
		maxJobs := fs.Int("max-jobs", 1, "VMs running at once")
		runtimeDir := fs.String("runtime-dir", qemu.DefaultRuntimeDir(), "folder for the VMs' sockets, overlays and seeds")
		verbose := fs.Bool("v", false, "log the orchestrator's messages")
		if err := fs.Parse(args); err != nil {
			return exitError{2}
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("unexpected arguments %q", fs.Args())
		}
		src, err := os.ReadFile(*wfPath)
		if err != nil {
			return fmt.Errorf("reading workflow: %w", err)
		}
		wf, err := workflow.Parse(*wfPath, src)
		if err != nil {
			return err
		}
		repo, err := localrun.OpenRepo(ctx, filepath.Dir(*wfPath))
		if err != nil {
			return err
		}
		if repo.Dirty(ctx) {
			fmt.Fprintf(env.stderr, "note: the work tree has uncommitted changes; the VMs check out HEAD (%s)\n", repo.SHA[:12])
		}
		secrets := map[string]string{}
		for _, n := range secretNames {
			v := env.getenv(n)
			if v == "" {
				return fmt.Errorf("secret %s: the environment variable %s is empty", n, n)
			}
			secrets[n] = v
		}
		cat, cache, err := imgs.open()
		if err != nil {
			return err
		}
		work, err := os.MkdirTemp("", "solstice-exec-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		bundle := filepath.Join(work, "repo.bundle")
		if err := repo.Bundle(ctx, bundle); err != nil {
			return err
		}
		level := slog.LevelWarn
		if *verbose {
			level = slog.LevelDebug
		}
		log := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: level}))
		q := memq.New()
		defer q.Close()
		st, err := sqlite.Open(ctx, filepath.Join(work, "jobs.db"))
		if err != nil {
			return err
		}
		defer st.Close()
		sealer, err := jobspec.NewSealer(jobspec.NewKey())
		if err != nil {
			return err
		}
		o, err := orchestrator.New(orchestrator.Config{
			Host: "exec", Labels: cat.Labels(), MaxJobs: *maxJobs, LocalBundleDir: work,
		}, orchestrator.Deps{
			Queue: q, Store: st, Sealer: sealer, Log: log,
			Backend: qemu.New(qemu.Config{RuntimeDir: *runtimeDir, Accel: *accel, Log: log}),
			Images:  orchestrator.CatalogImages{Catalog: cat, Cache: cache},
			Agent:   agentbin.Get,
		})
		if err != nil {
			return err
		}
		octx, stopOrch := context.WithCancel(context.WithoutCancel(ctx))
		orchDone := make(chan error, 1)
		go func() { orchDone <- o.Run(octx) }()
		defer func() {
			stopOrch()
			<-orchDone
		}()
		for deadline := time.Now().Add(30 * time.Second); !o.Ready(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				return errors.New("the orchestrator did not start")
			}
		}
		x := &localrun.Exec{Queue: q, Sealer: sealer, Out: env.stdout, Log: log, Route: "exec-" + uuid.NewString()}
		sum, err := x.Run(ctx, localrun.Options{
			Workflow: wf, Repo: repo, Bundle: bundle, Jobs: jobs, Matrix: matrix, Images: images,
			Secrets: secrets, Vars: vars, Network: *network,
		})
		if err != nil {
			return err
		}
		if !sum.OK() {
			return exitError{1}
		}
		return nil
	}}
}
