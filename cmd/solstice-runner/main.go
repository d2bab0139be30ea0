// Command solstice-runner is the guest agent of Solstice CI. It runs inside
// every job VM: it fetches the repository at the job's commit, runs the
// job's steps (or the repository's .solstice/workflow.kdl, or
// .solstice/job.sh), writes a human log on stderr and JSON event lines to
// the stream --events names, and exits with the job's result.
//
// Exit codes: 0 success; the failing step's own exit code; 124 a timeout;
// 80 a bad job file; 81 a failed fetch; 82 nothing to run; 83 an internal
// error; 84 cancelled. See docs/agent.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/solstice-ci/solstice/internal/agent"
	"github.com/solstice-ci/solstice/internal/agentapi"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv, os.Environ())
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string, environ []string) int {
	fs := flag.NewFlagSet("solstice-runner", flag.ContinueOnError)
	fs.SetOutput(stderr)
	events := fs.String("events", "none", "where JSON event lines go: stdout, stderr, fd:N, none, or a file path")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: solstice-runner [--events=stdout|stderr|fd:N|none|PATH]\n\n"+
			"The job comes from $%s (a YAML file, \"-\" for standard input; default %s)\n"+
			"or from $%s and $%s. The workspace is $%s (default %s).\n\n",
			agentapi.EnvJobFile, agentapi.DefaultJobFile, agentapi.EnvRepoURL, agentapi.EnvCommitSHA, agentapi.EnvWorkdir, agentapi.DefaultWorkdir)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return agentapi.ExitBadJob
	}
	if *showVersion {
		fmt.Fprintln(stdout, "solstice-runner", version)
		return 0
	}
	ev, closeEv, err := openEvents(*events, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "solstice-runner: --events: %v\n", err)
		return agentapi.ExitBadJob
	}
	defer closeEv()
	human := stderr
	if *events == "stderr" {
		human = nil // the events own stderr
	}

	job, err := agent.LoadJob(getenv, stdin, agentapi.DefaultJobFile)
	if err != nil {
		fmt.Fprintf(stderr, "solstice-runner: %v\n", err)
		writeBadJob(ev, err)
		return agentapi.ExitBadJob
	}
	workdir := getenv(agentapi.EnvWorkdir)
	if workdir == "" {
		workdir = agentapi.DefaultWorkdir
	}
	res := agent.Run(ctx, agent.Options{Job: job, Workdir: workdir, Events: ev, Human: human, Environ: environ})
	return res.ExitCode
}

// writeBadJob reports a job that cannot run as events too, so the host sees
// the reason in the job's log.
func writeBadJob(ev io.Writer, err error) {
	if ev == nil {
		return
	}
	line := strconv.Quote(err.Error())
	fmt.Fprintf(ev, `{"seq":1,"kind":"log","step":-1,"stream":"system","line":%s,"exit_code":0}`+"\n", line)
	fmt.Fprintf(ev, `{"seq":2,"kind":"job_finished","step":-1,"result":"failure","exit_code":%d}`+"\n", agentapi.ExitBadJob)
}

func openEvents(spec string, stdout, stderr io.Writer) (io.Writer, func(), error) {
	nop := func() {}
	switch {
	case spec == "" || spec == "none":
		return nil, nop, nil
	case spec == "stdout":
		return stdout, nop, nil
	case spec == "stderr":
		return stderr, nop, nil
	case strings.HasPrefix(spec, "fd:"):
		n, err := strconv.Atoi(spec[3:])
		if err != nil || n < 0 {
			return nil, nop, fmt.Errorf("%q is not fd:N", spec)
		}
		f := os.NewFile(uintptr(n), "events")
		if f == nil {
			return nil, nop, fmt.Errorf("file descriptor %d is not open", n)
		}
		if _, err := f.Stat(); err != nil {
			return nil, nop, fmt.Errorf("file descriptor %d is not open: %w", n, err)
		}
		return f, func() { f.Close() }, nil
	default:
		f, err := os.OpenFile(spec, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nop, err
		}
		return f, func() { f.Close() }, nil
	}
}
