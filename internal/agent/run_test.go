package agent

import (
	"context"
	"encoding/base64"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

func intp(n int) *int { return &n }

func TestRunSteps(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, map[string]string{"src/hello.txt": "hello\n"})
	tests := []struct {
		name     string
		job      func(j *agentapi.JobFile)
		result   string
		exitCode int
		check    func(t *testing.T, rr runResult)
	}{
		{
			name: "steps run in order in the checked out workspace",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{Run: "cat src/hello.txt"}, {Run: "echo second; echo to-stderr >&2"}}
			},
			result: agentapi.ResultSuccess,
			check: func(t *testing.T, rr runResult) {
				if got := rr.logLines(0); !slices.Contains(got, "hello") {
					t.Errorf("step 0 lines %q lack the file's content", got)
				}
				var sawErr bool
				for _, e := range rr.events {
					if e.Kind == agentapi.KindLog && e.Step == 1 && e.Stream == StreamStderr && e.Line == "to-stderr" {
						sawErr = true
					}
				}
				if !sawErr {
					t.Errorf("no stderr line of step 1 in\n%s", rr.raw)
				}
			},
		},
		{
			name: "a failing step ends the job with its own exit code and skips the rest",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{Run: "exit 7"}, {Run: "echo never"}, {Run: "echo cleanup", If: "always()"}}
			},
			result: agentapi.ResultFailure, exitCode: 7,
			check: func(t *testing.T, rr runResult) {
				f := rr.finished()
				if len(f) != 3 || f[0].ExitCode != 7 || f[1].Result != agentapi.ResultSkipped || f[2].Result != agentapi.ResultSuccess {
					t.Errorf("step results %+v", f)
				}
				if slices.Contains(rr.logLines(-2), "never") {
					t.Error("a step after the failure ran")
				}
			},
		},
		{
			name: "continue-on-error keeps the job going and successful",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{ID: "flaky", Run: "exit 2", ContinueOnError: true},
					{Run: "echo outcome=${{ steps.flaky.outcome }} conclusion=${{ steps.flaky.conclusion }}"}}
			},
			result: agentapi.ResultSuccess,
			check: func(t *testing.T, rr runResult) {
				if !slices.Contains(rr.logLines(1), "outcome=failure conclusion=success") {
					t.Errorf("lines %q", rr.logLines(1))
				}
			},
		},
		{
			name: "env layering, GITHUB_ENV, GITHUB_PATH and GITHUB_OUTPUT",
			job: func(j *agentapi.JobFile) {
				j.Env = map[string]string{"A": "job", "B": "job"}
				j.Outputs = map[string]string{"greeting": "${{ steps.out.outputs.greeting }}"}
				j.Steps = []agentapi.Step{
					{Run: "echo \"B=from-env-file\" >> \"$GITHUB_ENV\"\nmkdir -p \"$RUNNER_TEMP/bin\"\nprintf '#!/bin/sh\\necho tool ran\\n' > \"$RUNNER_TEMP/bin/mytool\"\nchmod +x \"$RUNNER_TEMP/bin/mytool\"\necho \"$RUNNER_TEMP/bin\" >> \"$GITHUB_PATH\""},
					{ID: "out", Env: map[string]string{"A": "step"}, Run: "echo \"A=$A B=$B CI=$CI WS=$GITHUB_WORKSPACE\"\nmytool\necho 'greeting=hi there' >> \"$GITHUB_OUTPUT\"\nprintf 'multi<<EOF\\nline1\\nline2\\nEOF\\n' >> \"$GITHUB_OUTPUT\""},
					{Run: "echo got ${{ steps.out.outputs.greeting }} / ${{ env.B }}"},
				}
			},
			result: agentapi.ResultSuccess,
			check: func(t *testing.T, rr runResult) {
				lines := rr.logLines(1)
				want := "A=step B=from-env-file CI=true WS=" + rr.work
				if !slices.Contains(lines, want) || !slices.Contains(lines, "tool ran") {
					t.Errorf("step 1 lines %q, want %q and tool ran", lines, want)
				}
				f := rr.finished()
				if f[1].Outputs["greeting"] != "hi there" || f[1].Outputs["multi"] != "line1\nline2" {
					t.Errorf("outputs %q", f[1].Outputs)
				}
				if !slices.Contains(rr.logLines(2), "got hi there / from-env-file") {
					t.Errorf("step 2 lines %q", rr.logLines(2))
				}
				if rr.Outputs["greeting"] != "hi there" {
					t.Errorf("job outputs %q", rr.Outputs)
				}
			},
		},
		{
			name: "working-directory inside the workspace",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{Run: "cat hello.txt", WorkingDirectory: "src"}}
			},
			result: agentapi.ResultSuccess,
		},
		{
			name: "working-directory escaping the workspace is refused",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{Run: "touch escaped", WorkingDirectory: "../../etc"}}
			},
			result: agentapi.ResultFailure, exitCode: 1,
			check: func(t *testing.T, rr runResult) {
				if !strings.Contains(strings.Join(rr.logLines(0), "\n"), "outside the workspace") {
					t.Errorf("lines %q", rr.logLines(0))
				}
			},
		},
		{
			name: "a step timeout kills the step's whole process group",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{Run: "sleep 600 &\necho $! > \"$RUNNER_TEMP/../child.pid\"\nsleep 600", TimeoutMinutes: 0.02}}
			},
			result: agentapi.ResultFailure, exitCode: agentapi.ExitStepTimeout,
		},
		{
			name: "bash when asked for; the default shell is sh -e",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{Shell: "bash", Run: "echo \"bash=${BASH_VERSION:+yes}\"; false | true"},
					{Run: "false\necho not reached"}}
			},
			result: agentapi.ResultFailure, exitCode: 1,
			check: func(t *testing.T, rr runResult) {
				if !slices.Contains(rr.logLines(0), "bash=yes") {
					t.Errorf("step 0 lines %q", rr.logLines(0))
				}
				if slices.Contains(rr.logLines(1), "not reached") {
					t.Error("sh -e did not stop at the failing command")
				}
			},
		},
		{
			name: "workflow commands: masks, groups and annotations",
			job: func(j *agentapi.JobFile) {
				j.Steps = []agentapi.Step{{Run: "v=hunter\necho \"::add-mask::${v}22\"\necho \"the value is ${v}22\"\necho '::group::Build'\necho '::endgroup::'\necho \"::error file=a.c,line=3,title=Oops::broke ${v}22\""}}
			},
			result: agentapi.ResultSuccess,
			check: func(t *testing.T, rr runResult) {
				if strings.Contains(rr.raw, "hunter22") || strings.Contains(rr.human, "hunter22") {
					t.Errorf("the ::add-mask:: value leaked:\n%s", rr.raw)
				}
				var a *agentapi.Event
				for i, e := range rr.events {
					if e.Kind == agentapi.KindAnnotation {
						a = &rr.events[i]
					}
				}
				if a == nil || a.Level != "error" || a.File != "a.c" || a.LineNo != 3 || a.Title != "Oops" || a.Message != "broke ***" {
					t.Errorf("annotation %+v", a)
				}
				if !slices.Contains(rr.logLines(0), "::group::Build") {
					t.Errorf("group line missing: %q", rr.logLines(0))
				}
			},
		},
		{
			name: "if: expressions over steps and env",
			job: func(j *agentapi.JobFile) {
				j.Env = map[string]string{"MODE": "fast"}
				j.Steps = []agentapi.Step{{ID: "a", Run: "echo x=1 >> $GITHUB_OUTPUT"},
					{If: "steps.a.outputs.x == '1' && env.MODE == 'fast'", Run: "echo ran"},
					{If: "${{ env.MODE == 'slow' }}", Run: "echo skipped"},
					{If: "failure()", Run: "echo only on failure"}}
			},
			result: agentapi.ResultSuccess,
			check: func(t *testing.T, rr runResult) {
				f := rr.finished()
				want := []string{agentapi.ResultSuccess, agentapi.ResultSuccess, agentapi.ResultSkipped, agentapi.ResultSkipped}
				for i, w := range want {
					if f[i].Result != w {
						t.Errorf("step %d result %s, want %s", i, f[i].Result, w)
					}
				}
			},
		},
		{
			name: "the checkout step fetches at its place, with a path",
			job: func(j *agentapi.JobFile) {
				j.Checkout.Skip = false
				j.Steps = []agentapi.Step{{Run: "test ! -e sub/history.txt && echo empty before"},
					{Uses: "actions/checkout@v4", With: map[string]string{"path": "sub", "fetch-depth": "0"}},
					{Run: "git -C sub log --oneline | wc -l | tr -d ' '"}}
			},
			result: agentapi.ResultSuccess,
			check: func(t *testing.T, rr runResult) {
				if !slices.Contains(rr.logLines(0), "empty before") || !slices.Contains(rr.logLines(2), "3") {
					t.Errorf("lines %q / %q", rr.logLines(0), rr.logLines(2))
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			job := agentapi.JobFile{RepoURL: repo.url, CommitSHA: repo.head()}
			tc.job(&job)
			rr := runJob(t, context.Background(), job)
			if rr.Result.Result != tc.result || rr.ExitCode != tc.exitCode {
				t.Fatalf("result %s exit %d, want %s exit %d\n%s", rr.Result.Result, rr.ExitCode, tc.result, tc.exitCode, rr.human)
			}
			if tc.check != nil {
				tc.check(t, rr)
			}
		})
	}
}

func TestStepTimeoutLeavesNoProcess(t *testing.T) {
	t.Parallel()
	marker := "solstice-timeout-" + strings.ReplaceAll(t.Name(), "/", "-")
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	job := agentapi.JobFile{Checkout: agentapi.Checkout{Skip: true}, Steps: []agentapi.Step{{
		Run: "sh -c 'sleep 600; echo " + marker + "' &\necho $! > " + pidFile + "\nsleep 600", TimeoutMinutes: 0.01}}}
	start := time.Now()
	rr := runJob(t, context.Background(), job)
	if rr.ExitCode != agentapi.ExitStepTimeout {
		t.Fatalf("exit %d, want %d\n%s", rr.ExitCode, agentapi.ExitStepTimeout, rr.human)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("the timed-out step held the job for %s", d)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(data))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			break
		}
		st, _ := os.ReadFile("/proc/" + pid + "/stat")
		if strings.Contains(string(st), ") Z ") {
			break // a zombie waiting for init: dead
		}
		if time.Now().After(deadline) {
			t.Fatalf("the step's background process %s survived the timeout", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCancelKillsStep(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	job := agentapi.JobFile{Checkout: agentapi.Checkout{Skip: true}, Steps: []agentapi.Step{
		{Run: "echo started; sleep 600"}, {Run: "echo not run"}, {If: "cancelled()", Run: "echo cleanup after cancel"}}}
	go func() {
		time.Sleep(300 * time.Millisecond)
		cancel()
	}()
	rr := runJob(t, ctx, job)
	if rr.Result.Result != agentapi.ResultCancelled || rr.ExitCode != agentapi.ExitCancelled {
		t.Fatalf("result %s exit %d\n%s", rr.Result.Result, rr.ExitCode, rr.human)
	}
	if slices.Contains(rr.logLines(1), "not run") || !slices.Contains(rr.logLines(2), "cleanup after cancel") {
		t.Errorf("lines after cancel: %q / %q", rr.logLines(1), rr.logLines(2))
	}
}

func TestFetch(t *testing.T) {
	t.Parallel()
	repo := newRepo(t)
	tests := []struct {
		name     string
		job      agentapi.JobFile
		exitCode int
		want     string // a line of the check step
	}{
		{"head", agentapi.JobFile{RepoURL: repo.url, CommitSHA: repo.head()}, 0, "3"},
		{"an older commit no branch points at", agentapi.JobFile{RepoURL: repo.url, CommitSHA: repo.commits[0]}, 0, "1"},
		{"a pull request commit only a ref points at", agentapi.JobFile{RepoURL: repo.url, CommitSHA: repo.pr, Ref: "refs/pull/1/head"}, 0, "4"},
		{"a commit that does not exist", agentapi.JobFile{RepoURL: repo.url, CommitSHA: strings.Repeat("ab", 20)}, agentapi.ExitFetchFailed, ""},
		{"an unreachable repository", agentapi.JobFile{RepoURL: "file:///nonexistent/repo.git", CommitSHA: repo.head()}, agentapi.ExitFetchFailed, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			job := tc.job
			job.Checkout.FetchDepth = intp(0)
			job.Steps = []agentapi.Step{{Run: "test \"$(git rev-parse HEAD)\" = \"$GITHUB_SHA\"\ngit rev-list --count HEAD"}}
			rr := runJob(t, context.Background(), job)
			if rr.ExitCode != tc.exitCode {
				t.Fatalf("exit %d, want %d\n%s", rr.ExitCode, tc.exitCode, rr.human)
			}
			if tc.exitCode != 0 {
				if len(rr.finished()) != 0 {
					t.Error("a step ran after a failed fetch")
				}
				if !strings.Contains(rr.human, "error: fetching") {
					t.Errorf("no clear fetch error in\n%s", rr.human)
				}
				return
			}
			if !slices.Contains(rr.logLines(0), tc.want) {
				t.Errorf("history depth lines %q, want %s", rr.logLines(0), tc.want)
			}
		})
	}
}

func TestFetchShallowAndTokenNotOnCommandLine(t *testing.T) {
	t.Parallel()
	repo := newRepo(t)
	token := "tok-" + strings.Repeat("z", 20)
	job := agentapi.JobFile{RepoURL: repo.url, CommitSHA: repo.head(),
		Checkout: agentapi.Checkout{Token: token},
		Steps:    []agentapi.Step{{Run: "git rev-list --count HEAD\necho token is " + token}}}
	rr := runJob(t, context.Background(), job)
	if rr.ExitCode != 0 {
		t.Fatalf("exit %d\n%s", rr.ExitCode, rr.human)
	}
	if !slices.Contains(rr.logLines(0), "1") {
		t.Errorf("the default fetch is not shallow: %q", rr.logLines(0))
	}
	if strings.Contains(rr.raw, token) || !slices.Contains(rr.logLines(0), "token is ***") {
		t.Errorf("the token leaked or was not masked: %q", rr.logLines(0))
	}
}

func TestFallbacks(t *testing.T) {
	t.Parallel()
	kdl := `workflow "ci" {
    env GREETING="hello"
    setup "echo setting up"
    step "build" run="echo build on $GREETING"
    os "illumos" {
        step "build" run="echo illumos build"
    }
    os "linux" {
        env GREETING="linux"
        step "extra" {
            run "echo linux only"
            shell "sh"
        }
    }
}
`
	tests := []struct {
		name     string
		files    map[string]string
		exitCode int
		lines    []string
	}{
		{"job.sh exit code", map[string]string{".solstice/job.sh": "#!/bin/sh\necho from job.sh\nexit 3\n"}, 3, []string{"from job.sh"}},
		{"workflow.kdl wins over job.sh", map[string]string{".solstice/workflow.kdl": kdl, ".solstice/job.sh": "exit 9\n"}, 0,
			[]string{"setting up", "build on linux", "linux only"}},
		{"bad workflow.kdl", map[string]string{".solstice/workflow.kdl": "step \"x\" {"}, agentapi.ExitBadJob, nil},
		{"nothing to run", map[string]string{"README": "x"}, agentapi.ExitNothingToRun, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			repo := newRepo(t, nil, nil, tc.files)
			rr := runJob(t, context.Background(), agentapi.JobFile{RepoURL: repo.url, CommitSHA: repo.head()})
			if rr.ExitCode != tc.exitCode {
				t.Fatalf("exit %d, want %d\n%s", rr.ExitCode, tc.exitCode, rr.human)
			}
			all := rr.logLines(-2)
			for _, l := range tc.lines {
				if !slices.Contains(all, l) {
					t.Errorf("line %q missing from %q", l, all)
				}
			}
		})
	}
}

func TestMaskingForms(t *testing.T) {
	t.Parallel()
	secret := "s3cr:t/v@lue\"x"
	multi := "-----BEGIN KEY-----\nAAAAlineone\nBBBBlinetwo\n-----END KEY-----"
	job := agentapi.JobFile{Checkout: agentapi.Checkout{Skip: true},
		Secrets: map[string]string{"S": secret, "KEY": multi}, Mask: []string{"extra-mask-value"},
		Steps: []agentapi.Step{{Env: map[string]string{"S": "${{ secrets.S }}", "KEY": "${{ secrets.KEY }}"}, Run: `printf '%s\n' "$S"
printf '%s' "$S" | base64
printf 'enc=%s\n' '` + url.QueryEscape(secret) + `'
printf 'json=%s\n' '` + `s3cr:t/v@lue\"x` + `'
printf '%s\n' "$KEY"
echo extra-mask-value
printf 'split: s3cr'; sleep 0.1; printf ':t/v@lue"x done\n'`}}}
	rr := runJob(t, context.Background(), job)
	if rr.ExitCode != 0 {
		t.Fatalf("exit %d\n%s", rr.ExitCode, rr.human)
	}
	for _, leak := range []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), url.QueryEscape(secret),
		"AAAAlineone", "BBBBlinetwo", "extra-mask-value", `s3cr:t/v@lue\"x`} {
		if strings.Contains(rr.raw, leak) || strings.Contains(rr.human, leak) {
			t.Errorf("%q leaked:\n%s", leak, rr.human)
		}
	}
	if !slices.Contains(rr.logLines(0), "split: *** done") {
		t.Errorf("a secret split across writes: %q", rr.logLines(0))
	}
}

func TestLongLinesAndInvalidUTF8(t *testing.T) {
	t.Parallel()
	job := agentapi.JobFile{Checkout: agentapi.Checkout{Skip: true}, Steps: []agentapi.Step{{
		Run: `head -c 40000 /dev/zero | tr '\0' 'a'; echo; printf 'bad \377\376 bytes\n'; printf 'no newline at end'`}}}
	rr := runJob(t, context.Background(), job)
	if rr.ExitCode != 0 {
		t.Fatalf("exit %d\n%s", rr.ExitCode, rr.human)
	}
	lines := rr.logLines(0)
	total := 0
	for _, l := range lines {
		if len(l) > MaxLine {
			t.Errorf("a line of %d bytes, more than %d", len(l), MaxLine)
		}
		if strings.Trim(l, "a") == "" {
			total += len(l)
		}
	}
	if total != 40000 {
		t.Errorf("the long line arrived as %d bytes, want 40000", total)
	}
	if !slices.Contains(lines, "bad \uFFFD bytes") || !slices.Contains(lines, "no newline at end") {
		t.Errorf("last lines %q", lines[len(lines)-2:])
	}
}

func TestInsideWorkspace(t *testing.T) {
	t.Parallel()
	ws := t.TempDir()
	if err := os.Symlink("/etc", filepath.Join(ws, "link")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in string
		ok bool
	}{{"src", true}, {"a/../b", true}, {".", true}, {"../x", false}, {"../../etc", false}, {"/etc", false}, {ws + "/sub", true}, {"link", false}, {"..", false}} {
		_, err := insideWorkspace(ws, tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("insideWorkspace(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}
