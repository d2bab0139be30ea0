package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// FetchError is a repository that could not be fetched at the commit. The
// agent exits with agentapi.ExitFetchFailed.
type FetchError struct {
	Repo string // the URL with any credentials removed
	SHA  string
	Err  error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("fetching %s at %s: %v", e.Repo, e.SHA, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// fetchSpec is what to fetch.
type fetchSpec struct {
	RepoURL    string
	Bundle     string // a git bundle to fetch from instead of RepoURL
	SHA        string
	Ref        string
	Depth      int // 0 = full history
	Token      string
	Submodules string // "", "true", "recursive"
}

// gitRunner runs the system git with a controlled environment. Its output
// goes to the job log through out (already a masking writer).
type gitRunner struct {
	env []string
	out io.Writer
}

// fetchRepo makes dir a checkout of spec.SHA (detached HEAD). It fetches
// only that commit, shallow where the server allows it, and falls back to
// fetching every ref (and spec.Ref) when the server refuses a bare SHA. A
// token reaches git through GIT_CONFIG_* variables of its environment, never
// its command line.
func fetchRepo(ctx context.Context, dir string, spec fetchSpec, baseEnv []string, out io.Writer, logf func(string, ...any)) error {
	source := spec.RepoURL
	if spec.Bundle != "" {
		source = spec.Bundle
	}
	shown := redactURL(source)
	fail := func(err error) error { return &FetchError{Repo: shown, SHA: spec.SHA, Err: err} }

	if _, err := exec.LookPath("git"); err != nil {
		return fail(errors.New("git is not installed in the guest (PATH=" + os.Getenv("PATH") + ")"))
	}
	env := append([]string{}, baseEnv...)
	env = append(env, "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=true", "SSH_ASKPASS=true",
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new", "LC_ALL=C")
	if spec.Token != "" && spec.Bundle == "" {
		cred := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + spec.Token))
		env = append(env, "GIT_CONFIG_COUNT=1",
			"GIT_CONFIG_KEY_0=http.extraHeader",
			"GIT_CONFIG_VALUE_0=Authorization: basic "+cred)
	}
	g := &gitRunner{env: env, out: out}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(fmt.Errorf("creating the workspace: %w", err))
	}
	if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
		if err := g.run(ctx, dir, "init", "-q"); err != nil {
			return fail(err)
		}
	}
	if g.quiet(ctx, dir, "remote", "get-url", "origin") == nil {
		if err := g.run(ctx, dir, "remote", "remove", "origin"); err != nil {
			return fail(err)
		}
	}
	if err := g.run(ctx, dir, "remote", "add", "origin", source); err != nil {
		return fail(err)
	}
	depthArgs := []string{}
	if spec.Depth > 0 && spec.Bundle == "" {
		depthArgs = append(depthArgs, "--depth="+strconv.Itoa(spec.Depth))
	}
	logf("fetching %s at %s", shown, spec.SHA)
	fetch := append([]string{"fetch", "--no-tags", "--prune", "--no-recurse-submodules"}, depthArgs...)
	first := g.run(ctx, dir, append(append([]string{}, fetch...), "origin", spec.SHA)...)
	if first != nil {
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		// The server does not serve a bare SHA (uploadpack.allowReachableSHA1InWant
		// off) or cannot be reached: fetch the refs and look for the commit.
		logf("the server did not serve the commit by its SHA; fetching all branches and tags")
		refs := []string{"+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"}
		if spec.Ref != "" && strings.HasPrefix(spec.Ref, "refs/") {
			refs = append(refs, "+"+spec.Ref+":refs/solstice/ref")
		}
		full := []string{"fetch", "--no-recurse-submodules", "origin"}
		if err := g.run(ctx, dir, append(full, refs...)...); err != nil {
			return fail(fmt.Errorf("%v (fetching the commit by its SHA failed first: %v)", err, first))
		}
	}
	if err := g.run(ctx, dir, "cat-file", "-e", spec.SHA+"^{commit}"); err != nil {
		return fail(errors.New("the commit is not in the repository"))
	}
	if err := g.run(ctx, dir, "-c", "advice.detachedHead=false", "checkout", "-q", "--force", "--detach", spec.SHA); err != nil {
		return fail(err)
	}
	if spec.Submodules == "true" || spec.Submodules == "recursive" {
		args := []string{"submodule", "update", "--init", "--force"}
		if spec.Submodules == "recursive" {
			args = append(args, "--recursive")
		}
		if spec.Depth > 0 {
			args = append(args, "--depth="+strconv.Itoa(spec.Depth))
		}
		if err := g.run(ctx, dir, args...); err != nil {
			return fail(fmt.Errorf("submodules: %w", err))
		}
	}
	logf("checked out %s", spec.SHA)
	return nil
}

// run runs git with args in dir. Its output goes to the log; on failure the
// error carries the last line git printed.
func (g *gitRunner) run(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = g.env
	var tail bytes.Buffer
	w := io.MultiWriter(&tail, g.out)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Run(); err != nil {
		last := lastLine(tail.String())
		if last == "" {
			return fmt.Errorf("git %s: %w", args[0], err)
		}
		return fmt.Errorf("git %s: %s", args[0], last)
	}
	return nil
}

// quiet runs git with its output discarded.
func (g *gitRunner) quiet(ctx context.Context, dir string, args ...string) error {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = g.env
	return cmd.Run()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// redactURL removes credentials from a URL for display.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = nil
	return u.String()
}
