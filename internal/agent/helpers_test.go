package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// testRepo is a real git repository made for a test.
type testRepo struct {
	dir     string
	url     string
	commits []string // oldest first, on main
	pr      string   // a commit only refs/pull/1/head points at
}

func git(t testing.TB, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_GLOBAL=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// newRepo makes a repository with three commits on main whose files are
// given per commit, and a pull-request commit no branch points at.
func newRepo(t testing.TB, files ...map[string]string) *testRepo {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is needed: %v", err)
	}
	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	r := &testRepo{dir: dir, url: "file://" + dir}
	for i := 0; i < 3; i++ {
		if err := os.WriteFile(filepath.Join(dir, "history.txt"), []byte(strings.Repeat("x\n", i+1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if i < len(files) {
			for name, content := range files[i] {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				mode := os.FileMode(0o644)
				if strings.HasSuffix(name, ".sh") {
					mode = 0o755
				}
				if err := os.WriteFile(p, []byte(content), mode); err != nil {
					t.Fatal(err)
				}
			}
		}
		git(t, dir, "add", "-A")
		git(t, dir, "commit", "-q", "-m", "commit "+string(rune('A'+i)))
		r.commits = append(r.commits, git(t, dir, "rev-parse", "HEAD"))
	}
	git(t, dir, "checkout", "-q", "-b", "pr")
	if err := os.WriteFile(filepath.Join(dir, "pr.txt"), []byte("from the pull request\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "pull request")
	r.pr = git(t, dir, "rev-parse", "HEAD")
	git(t, dir, "update-ref", "refs/pull/1/head", r.pr)
	git(t, dir, "checkout", "-q", "main")
	git(t, dir, "branch", "-q", "-D", "pr")
	return r
}

func (r *testRepo) head() string { return r.commits[len(r.commits)-1] }

// runResult is what a test run of the agent produced.
type runResult struct {
	Result
	events []agentapi.Event
	human  string
	raw    string
	work   string
}

// logLines returns the log lines of step (all steps when step < -1).
func (rr runResult) logLines(step int) []string {
	var out []string
	for _, e := range rr.events {
		if e.Kind == agentapi.KindLog && (step < -1 || e.Step == step) {
			out = append(out, e.Line)
		}
	}
	return out
}

func (rr runResult) finished() []agentapi.Event {
	var out []agentapi.Event
	for _, e := range rr.events {
		if e.Kind == agentapi.KindStepFinished {
			out = append(out, e)
		}
	}
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runJob(t testing.TB, ctx context.Context, job agentapi.JobFile) runResult {
	t.Helper()
	work := filepath.Join(t.TempDir(), "work")
	var ev, human syncBuffer
	res := Run(ctx, Options{Job: job, Workdir: work, Events: &ev, Human: &human, Environ: os.Environ(), TempDir: t.TempDir()})
	rr := runResult{Result: res, human: human.String(), raw: ev.String(), work: work}
	sc := bufio.NewScanner(strings.NewReader(rr.raw))
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	var last int64
	for sc.Scan() {
		var e agentapi.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("event line %q is not JSON: %v", sc.Text(), err)
		}
		if e.Seq != last+1 {
			t.Fatalf("event seq %d follows %d", e.Seq, last)
		}
		last = e.Seq
		rr.events = append(rr.events, e)
	}
	if n := len(rr.events); n == 0 || rr.events[n-1].Kind != agentapi.KindJobFinished {
		t.Fatalf("the last event is not job_finished:\n%s", rr.raw)
	}
	return rr
}

// decodeLines returns the log lines of a raw event stream.
func decodeLines(t testing.TB, raw string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(raw, "\n") {
		if l == "" {
			continue
		}
		var e agentapi.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("event %q: %v", l, err)
		}
		if e.Kind == agentapi.KindLog {
			out = append(out, e.Line)
		}
	}
	return out
}
