package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

func gitRepo(t *testing.T, files map[string]string) (url, sha string) {
	t.Helper()
	dir := t.TempDir()
	run := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@e")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("init", "-q")
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run("add", "-A")
	run("commit", "-q", "-m", "x")
	return "file://" + dir, run("rev-parse", "HEAD")
}

func TestRunner(t *testing.T) {
	t.Parallel()
	url, sha := gitRepo(t, map[string]string{".solstice/job.sh": "#!/bin/sh\necho hi from the job\nexit 3\n"})
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		stdin   string
		code    int
		stderr  string // substring of the human log
		events  string // substring of the events
		noSteps bool
	}{
		{name: "env job: job.sh exit code", env: map[string]string{"SOLSTICE_REPO_URL": url, "SOLSTICE_COMMIT_SHA": sha},
			args: []string{"--events=stdout"}, code: 3, stderr: "hi from the job", events: `"kind":"job_finished"`},
		{name: "job file on stdin", env: map[string]string{"SOLSTICE_JOB_FILE": "-"}, args: []string{"--events=stdout"},
			stdin: "repo_url: " + url + "\ncommit_sha: " + sha + "\nsteps:\n  - run: echo step ran\n", code: 0, stderr: "step ran", events: `"line":"step ran"`},
		{name: "malformed yaml", env: map[string]string{"SOLSTICE_JOB_FILE": "-"}, args: []string{"--events=stdout"},
			stdin: "steps: [", code: agentapi.ExitBadJob, stderr: "malformed YAML", events: `"result":"failure"`, noSteps: true},
		{name: "bad sha", env: map[string]string{"SOLSTICE_REPO_URL": url, "SOLSTICE_COMMIT_SHA": "1234"},
			code: agentapi.ExitBadJob, stderr: "commit_sha", noSteps: true},
		{name: "unreachable repository", env: map[string]string{"SOLSTICE_REPO_URL": "file:///nonexistent", "SOLSTICE_COMMIT_SHA": sha},
			code: agentapi.ExitFetchFailed, stderr: "error: fetching file:///nonexistent", noSteps: true},
		{name: "bad events flag", args: []string{"--events=fd:x"}, code: agentapi.ExitBadJob, stderr: "fd:N"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"SOLSTICE_WORKDIR": filepath.Join(t.TempDir(), "work")}
			for k, v := range tc.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, strings.NewReader(tc.stdin), &stdout, &stderr,
				func(k string) string { return env[k] }, os.Environ())
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstderr:\n%s", code, tc.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.events) {
				t.Errorf("events lack %q:\n%s", tc.events, stdout.String())
			}
			if tc.noSteps && strings.Contains(stdout.String(), `"kind":"step_started"`) {
				t.Errorf("a step ran on bad input:\n%s", stdout.String())
			}
		})
	}
}
