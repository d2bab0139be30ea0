package agent

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"slices"
	"strings"
	"testing"
)

func TestParseJob(t *testing.T) {
	t.Parallel()
	sha := strings.Repeat("a", 40)
	tests := []struct {
		name, yaml string
		field      string // the field the error must name; "" = valid
		msg        string
	}{
		{"minimal", "repo_url: https://example.com/r.git\ncommit_sha: " + sha, "", ""},
		{"sha256 commit", "repo_url: https://example.com/r.git\ncommit_sha: " + strings.Repeat("b", 64), "", ""},
		{"steps and options", "repo_url: file:///r\ncommit_sha: " + sha + "\ncheckout: {fetch_depth: 0, submodules: recursive}\nenv: {A: b}\nsecrets: {S: x}\nmask: [m]\nsteps:\n  - run: make\n    working_directory: src\n    timeout_minutes: 5\n    continue_on_error: true\n", "", ""},
		{"no repo needed when nothing is fetched", "checkout: {skip: true}\nsteps: [{run: echo}]", "", ""},
		{"empty", "", "", "empty"},
		{"malformed yaml", "repo_url: [unclosed", "", "malformed YAML"},
		{"unknown key", "repo_url: x\ncommit_sha: " + sha + "\nrepo_ulr: y", "", "repo_ulr"},
		{"missing sha", "repo_url: https://example.com/r.git", "commit_sha", "missing"},
		{"missing repo", "commit_sha: " + sha, "repo_url", "missing"},
		{"short sha", "repo_url: x\ncommit_sha: abc123", "commit_sha", "40 or 64 hex"},
		{"non-hex sha", "repo_url: x\ncommit_sha: " + strings.Repeat("g", 40), "commit_sha", "40 or 64 hex"},
		{"option-like url", "repo_url: --upload-pack=evil\ncommit_sha: " + sha, "repo_url", "not a URL"},
		{"unsupported uses", "repo_url: x\ncommit_sha: " + sha + "\nsteps: [{uses: actions/setup-go@v5}]", "steps[0].uses", "only run"},
		{"step without run", "repo_url: x\ncommit_sha: " + sha + "\nsteps: [{name: nothing}]", "steps[0].run", "missing"},
		{"bad submodules", "repo_url: x\ncommit_sha: " + sha + "\ncheckout: {submodules: maybe}", "checkout.submodules", "true, false or recursive"},
		{"newer version", "version: 99\nrepo_url: x\ncommit_sha: " + sha, "version", "newer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseJob("job.yaml", []byte(tc.yaml))
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var je *JobError
			if !errors.As(err, &je) {
				t.Fatalf("error %v is not a JobError", err)
			}
			if je.Field != tc.field || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), "job.yaml") {
				t.Errorf("error %q (field %q), want field %q and %q", err, je.Field, tc.field, tc.msg)
			}
		})
	}
}

func TestLoadJobFromEnvironment(t *testing.T) {
	t.Parallel()
	sha := strings.Repeat("c", 40)
	env := map[string]string{"SOLSTICE_REPO_URL": "file:///r", "SOLSTICE_COMMIT_SHA": sha}
	job, err := LoadJob(func(k string) string { return env[k] }, nil, "/nonexistent/job.yaml")
	if err != nil || job.RepoURL != "file:///r" || job.CommitSHA != sha {
		t.Fatalf("job %+v, err %v", job, err)
	}
	_, err = LoadJob(func(string) string { return "" }, nil, "/nonexistent/job.yaml")
	if err == nil || !strings.Contains(err.Error(), "SOLSTICE_REPO_URL") {
		t.Errorf("no job: err %v", err)
	}
	_, err = LoadJob(func(k string) string { return map[string]string{"SOLSTICE_JOB_FILE": "/nonexistent/x.yaml"}[k] }, nil, "")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/x.yaml") {
		t.Errorf("missing file: err %v", err)
	}
	job, err = LoadJob(func(k string) string { return map[string]string{"SOLSTICE_JOB_FILE": "-"}[k] },
		strings.NewReader("repo_url: file:///s\ncommit_sha: "+sha), "")
	if err != nil || job.RepoURL != "file:///s" {
		t.Errorf("stdin: job %+v err %v", job, err)
	}
}

func TestParseKDL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src string
		goos      string
		steps     []string // name=run for each step
		env       map[string]string
		err       string
	}{
		{"bare nodes", "step \"a\" run=\"echo a\"\nstep \"b\" { run \"echo b\"; }\n", "linux", []string{"a=echo a", "b=echo b"}, nil, ""},
		{"workflow block with setup and variants",
			"workflow \"ci\" {\n env CC=\"cc\" N=3\n setup \"prep\"\n step \"build\" run=\"make\"\n os \"illumos\" {\n  env CC=\"gcc\"\n  setup \"pkg install gcc\"\n  step \"build\" run=\"gmake\"\n }\n os \"freebsd\" {\n  step \"extra\" run=\"x\"\n }\n}\n",
			"illumos", []string{"Setup: prep=prep", "Setup: pkg install gcc=pkg install gcc", "build=gmake"}, map[string]string{"CC": "gcc", "N": "3"}, ""},
		{"solaris matches illumos", "step \"a\" run=\"x\"\nos \"solaris\" {\n step \"b\" run=\"y\"\n}\n", "illumos", []string{"a=x", "b=y"}, nil, ""},
		{"variant for another os", "step \"a\" run=\"x\"\nos \"freebsd\" {\n step \"b\" run=\"y\"\n}\n", "linux", []string{"a=x"}, nil, ""},
		{"step options", "step \"t\" {\n run \"make check\"\n shell \"bash\"\n timeout-minutes 10\n continue-on-error true\n working-directory \"src\"\n env {\n  V \"1\"\n }\n}\n", "linux", []string{"t=make check"}, nil, ""},
		{"not kdl", "step \"a\" {", "linux", nil, nil, "not valid KDL"},
		{"unknown node", "stage \"a\"", "linux", nil, nil, "unknown node \"stage\""},
		{"step without run", "step \"a\" shell=\"sh\"", "linux", nil, nil, "has no run script"},
		{"step without name", "step run=\"x\"", "linux", nil, nil, "exactly one name"},
		{"bad timeout", "step \"a\" run=\"x\" timeout-minutes=\"soon\"", "linux", nil, nil, "must be a number"},
		{"unknown step key", "step \"a\" run=\"x\" retries=3", "linux", nil, nil, "unknown key \"retries\""},
		{"os without name", "os {\n step \"a\" run=\"x\"\n}", "linux", nil, nil, "names no OS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w, err := ParseKDL(".solstice/workflow.kdl", []byte(tc.src))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "workflow.kdl") {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			steps, env := w.For(tc.goos)
			var got []string
			for _, s := range steps {
				got = append(got, s.Name+"="+s.Run)
			}
			if !slices.Equal(got, tc.steps) {
				t.Errorf("steps %q, want %q", got, tc.steps)
			}
			for k, v := range tc.env {
				if env[k] != v {
					t.Errorf("env %s=%q, want %q", k, env[k], v)
				}
			}
		})
	}
}

func TestParseKeyValues(t *testing.T) {
	t.Parallel()
	got, order, err := parseKeyValues("GITHUB_OUTPUT", "a=1\nb=x=y\n\nm<<EOF\nl1\nl2\nEOF\na=2\n")
	if err != nil {
		t.Fatal(err)
	}
	if got["a"] != "2" || got["b"] != "x=y" || got["m"] != "l1\nl2" || !slices.Equal(order, []string{"a", "b", "m"}) {
		t.Errorf("got %q order %q", got, order)
	}
	for _, bad := range []string{"novalue", "m<<EOF\nnever closed", "=x", "x<<\n"} {
		if _, _, err := parseKeyValues("GITHUB_ENV", bad); err == nil || !strings.Contains(err.Error(), "GITHUB_ENV") {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func TestCommands(t *testing.T) {
	t.Parallel()
	m := NewMasker()
	c := &commands{mask: m}
	if a, ok := c.process("::warning file=x%2Cy.go,line=12::careful%0Anow"); !ok || a == nil || a.file != "x,y.go" || a.line != 12 || a.message != "careful\nnow" {
		t.Errorf("warning: %+v %v", a, ok)
	}
	c.process("::add-mask::multi%0Aline-secret")
	if got := m.Replace("a multi b line-secret"); got != "a *** b ***" {
		t.Errorf("masked %q", got)
	}
	c.process("::stop-commands::tok123")
	if _, ok := c.process("::add-mask::ignored"); ok || m.Replace("ignored") != "ignored" {
		t.Error("a command ran while commands were stopped")
	}
	c.process("::tok123::")
	if _, ok := c.process("::add-mask::now-masked"); !ok || m.Replace("now-masked") != Mask {
		t.Error("commands did not resume")
	}
	if _, ok := c.process("plain ::text::"); ok {
		t.Error("a plain line was taken for a command")
	}
}

func TestMaskerSplitWrites(t *testing.T) {
	t.Parallel()
	secret := "correct-horse-battery"
	for split := 1; split < len(secret); split++ {
		var out syncBuffer
		m := NewMasker(secret)
		e := newEmitter(&out, nil, m, nil)
		w := &lineWriter{e: e, step: 0, stream: StreamStdout}
		w.Write([]byte("x " + secret[:split]))
		w.Write([]byte(secret[split:] + " y\n"))
		w.Flush()
		e.close()
		if strings.Contains(out.String(), "horse") || !strings.Contains(out.String(), `"x *** y"`) {
			t.Fatalf("split at %d: %s", split, out.String())
		}
	}
}

func TestMaskerLongLineStraddle(t *testing.T) {
	t.Parallel()
	secret := "SECRETVALUE123"
	m := NewMasker(secret)
	var out syncBuffer
	e := newEmitter(&out, nil, m, nil)
	w := &lineWriter{e: e, step: 0, stream: StreamStdout}
	// The secret sits across the MaxLine boundary of a line without newline.
	w.Write([]byte(strings.Repeat("a", MaxLine-5) + secret + strings.Repeat("b", 100)))
	w.Flush()
	e.close()
	if strings.Contains(out.String(), "SECRET") || strings.Contains(out.String(), "E123") {
		t.Fatalf("the secret leaked across a line cut")
	}
}

func TestAppendLogEventMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, line := range []string{"plain", `quo"te \ back`, "tab\tcr\rctl\x01<b>&", "ünïcödé \u2028 ✓", ""} {
		ev := agentapi.Event{Seq: 42, Kind: agentapi.KindLog, Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC), Step: -1, Stream: "stderr", Line: line}
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got := appendLogEvent(nil, &ev)
		if string(got) != string(want)+"\n" {
			t.Errorf("line %q:\n got %s\nwant %s", line, got, want)
		}
	}
}
