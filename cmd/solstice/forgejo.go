package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/solstice-ci/solstice/internal/forgejo"
	"github.com/solstice-ci/solstice/internal/vm/image"
)

// forgejoFlags configure a Forgejo runner daemon (forgejo run, serve).
type forgejoFlags struct {
	capacity      int
	fetchInterval time.Duration
	drain         time.Duration
}

func (f *forgejoFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.capacity, "forgejo-capacity", 1, "Forgejo tasks running at once")
	fs.DurationVar(&f.fetchInterval, "forgejo-fetch-interval", 2*time.Second, "pause between FetchTask calls while idle")
	fs.DurationVar(&f.drain, "forgejo-drain-timeout", 10*time.Minute, "on SIGTERM, how long running tasks go on being reported before the daemon exits (the next start resumes them)")
}

// daemon loads the credentials in file and makes the daemon on bb.
func (f *forgejoFlags) daemon(bb *backbone, file string, cat *image.Catalog) (*forgejo.Daemon, error) {
	creds, err := forgejo.LoadCredentials(file)
	if err != nil {
		return nil, err
	}
	names, err := forgejo.CheckLabels(creds.Labels, cat)
	if err != nil {
		return nil, fmt.Errorf("the labels in %s: %w", file, err)
	}
	return forgejo.New(forgejo.Config{
		Credentials: creds, Labels: names, Capacity: f.capacity, FetchInterval: f.fetchInterval,
		DrainTimeout: f.drain, Version: "solstice " + version, Log: bb.log,
	}, forgejo.Deps{Queue: bb.q, Store: bb.st, Sealer: bb.sealer})
}

func forgejoCmd() command {
	return command{"the Forgejo Actions runner daemon (register | run)", func(ctx context.Context, env *cliEnv, args []string) error {
		if len(args) == 0 {
			fmt.Fprintln(env.stderr, "usage: solstice forgejo register|run [flags] (-h for each)")
			return exitError{2}
		}
		switch args[0] {
		case "register":
			return forgejoRegister(ctx, env, args[1:])
		case "run":
			return forgejoRun(ctx, env, args[1:])
		}
		fmt.Fprintf(env.stderr, "solstice forgejo: unknown subcommand %q (register, run)\n", args[0])
		return exitError{2}
	}}
}

func forgejoRegister(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("forgejo register", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var imgs imageFlags
	imgs.register(fs)
	instance := fs.String("instance", "", "URL of the Forgejo instance, e.g. https://codeberg.example")
	token := fs.String("token", env.getenv("SOLSTICE_FORGEJO_TOKEN"), "registration token from the instance's runner settings (env SOLSTICE_FORGEJO_TOKEN)")
	secret := fs.String("secret", "", "instead of -token: the 40-hex secret given to `forgejo forgejo-cli actions register --secret` (offline registration, no call to the server)")
	name := fs.String("name", "", "runner name (default: the host name)")
	labels := fs.String("labels", "", "comma-separated labels, name or name:host (default: every image of the catalog)")
	file := fs.String("runner", ".runner", "file to write the credentials to (mode 0600)")
	if err := fs.Parse(args); err != nil {
		return exitError{2}
	}
	if *instance == "" || (*token == "") == (*secret == "") {
		return errors.New("forgejo register needs -instance and exactly one of -token and -secret")
	}
	cat, _, err := imgs.open()
	if err != nil {
		return err
	}
	ls := forgejo.DefaultLabels(cat)
	if *labels != "" {
		ls = nil
		for _, l := range strings.Split(*labels, ",") {
			if l = strings.TrimSpace(l); l != "" {
				ls = append(ls, l)
			}
		}
	}
	names, err := forgejo.CheckLabels(ls, cat)
	if err != nil {
		return err
	}
	// Keep the name:scheme form the servers accept.
	full := make([]string, len(names))
	for i, n := range names {
		full[i] = n + ":" + forgejo.SchemeHost
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	var creds forgejo.Credentials
	if *secret != "" {
		creds, err = forgejo.OfflineCredentials(*instance, *secret, *name, full)
	} else {
		creds, err = forgejo.Register(ctx, forgejo.RegisterOptions{Instance: *instance, Token: *token, Name: *name,
			Labels: full, Version: "solstice " + version, HTTP: &http.Client{Timeout: 60 * time.Second}})
	}
	if err != nil {
		return err
	}
	if err := forgejo.SaveCredentials(*file, creds); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "registered runner %q (uuid %s) with %s, labels %s; credentials in %s\n",
		creds.Name, creds.UUID, creds.Address, strings.Join(creds.Labels, ","), *file)
	return nil
}

func forgejoRun(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("forgejo run", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	var f orchFlags
	f.registerBackbone(fs, env)
	f.forgejo.register(fs)
	file := fs.String("runner", envOr(env, "SOLSTICE_FORGEJO_RUNNER", ".runner"), "the credentials file of forgejo register (env SOLSTICE_FORGEJO_RUNNER)")
	if err := fs.Parse(args); err != nil {
		return exitError{2}
	}
	if f.amqpURL == "" || f.databaseURL == "" {
		return errors.New("solstice forgejo run alone needs -amqp-url and -database-url to reach the orchestrators (on one host, use solstice serve -forgejo-runner FILE)")
	}
	cat, _, err := f.imgs.open()
	if err != nil {
		return err
	}
	bb, err := f.openBackbone(ctx, env)
	if err != nil {
		return err
	}
	defer bb.Close()
	d, err := f.forgejo.daemon(bb, *file, cat)
	if err != nil {
		return err
	}
	return d.Run(ctx)
}
