package forgejo

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/solstice-ci/solstice/internal/jobspec"
)

const (
	testSHA          = "89abcdef0123456789abcdef0123456789abcdef"
	testToken        = "0123456789abcdef0123456789abcdef01234567"
	testRuntimeToken = "eyJhbGciOiJIUzI1NiJ9.runtime.sig"
	testDeployKey    = "s3cret-deploy-key"
	testRunnerUUID   = "5b2c1d8e-0000-4000-8000-000000000001"
)

// taskContext is a task context as a Forgejo server sends it: the keys it
// leaves for the runner are empty.
func taskContext() map[string]any {
	return map[string]any{
		"action": "", "action_path": "", "action_ref": "", "action_repository": "",
		"actor":    "alice",
		"api_url":  "http://127.0.0.1:3300/api/v1",
		"base_ref": "",
		"env":      "",
		"event": map[string]any{
			"ref":   "refs/heads/main",
			"after": testSHA,
			"repository": map[string]any{
				"full_name": "acme/widget",
				"id":        7.0,
			},
		},
		"event_name":                "push",
		"gitea_default_actions_url": "https://data.forgejo.org",
		"gitea_runtime_token":       testRuntimeToken,
		"graphql_url":               "",
		"head_ref":                  "",
		"job":                       "build",
		"path":                      "",
		"ref":                       "refs/heads/main",
		"ref_name":                  "main",
		"ref_protected":             false,
		"ref_type":                  "branch",
		"repository":                "acme/widget",
		"repositoryUrl":             "http://127.0.0.1:3300/acme/widget.git",
		"repository_owner":          "acme",
		"retention_days":            "",
		"run_attempt":               "1",
		"run_id":                    "12",
		"run_number":                "3",
		"secret_source":             "Actions",
		"server_url":                "http://127.0.0.1:3300",
		"sha":                       testSHA,
		"token":                     testToken,
		"triggering_actor":          "alice",
		"workflow":                  "ci.yml",
		"workspace":                 "",
	}
}

// newTask makes a task of a payload file of testdata.
func newTask(t testing.TB, payload string) *runnerv1.Task {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", payload))
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := structpb.NewStruct(taskContext())
	if err != nil {
		t.Fatal(err)
	}
	return &runnerv1.Task{
		Id:              42,
		WorkflowPayload: src,
		Context:         ctx,
		Secrets: map[string]string{
			"GITHUB_TOKEN":  testToken,
			"GITEA_TOKEN":   testToken,
			"FORGEJO_TOKEN": testToken,
			"DEPLOY_KEY":    testDeployKey,
		},
		Vars: map[string]string{"LEVEL": "3", "DEPLOY": "yes"},
		Needs: map[string]*runnerv1.TaskNeed{
			"setup": {Outputs: map[string]string{"lib": "libwidget.so"}, Result: runnerv1.Result_RESULT_SUCCESS},
		},
	}
}

func newTestSealer(t testing.TB) *jobspec.Sealer {
	t.Helper()
	s, err := jobspec.NewSealer(jobspec.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ctxPath walks nested maps.
func ctxPath(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func TestTranslateTask(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		payload string
		edit    func(*runnerv1.Task)
		check   func(t *testing.T, req jobspec.JobRequest, s jobspec.Secrets)
	}{
		{
			name:    "matrix leg",
			payload: "matrix.yaml",
			check: func(t *testing.T, req jobspec.JobRequest, _ jobspec.Secrets) {
				if got, want := req.Name, "build (1.21, omnios-r151056)"; got != want {
					t.Errorf("Name = %q, want %q", got, want)
				}
				if got, want := req.RunsOn, "omnios-r151056"; got != want {
					t.Errorf("RunsOn = %q, want %q", got, want)
				}
				m := req.Contexts["matrix"]
				if got := ctxPath(m, "go"); got != "1.21" {
					t.Errorf("matrix.go = %#v, want \"1.21\"", got)
				}
				if got := ctxPath(m, "os"); got != "omnios-r151056" {
					t.Errorf("matrix.os = %#v, want omnios-r151056", got)
				}
				if got := ctxPath(m, "experimental"); got != true {
					t.Errorf("matrix.experimental (from include) = %#v, want true", got)
				}
				if got := ctxPath(req.Contexts["strategy"], "fail-fast"); got != false {
					t.Errorf("strategy.fail-fast = %#v, want false", got)
				}
				if len(req.Steps) != 2 {
					t.Fatalf("got %d steps, want 2", len(req.Steps))
				}
				if got, want := req.Steps[1].Name, "build with go 1.21"; got != want {
					t.Errorf("step name = %q, want %q", got, want)
				}
				run := req.Steps[1].Run
				for _, want := range []string{
					"go 1.21 on omnios-r151056 experimental=true",
					"lib libwidget.so (success) for acme/widget@" + testSHA,
				} {
					if !strings.Contains(run, want) {
						t.Errorf("run = %q, want it to hold %q", run, want)
					}
				}
				if got, want := req.Steps[1].Env["DEPLOY_KEY"], "${{ secrets.DEPLOY_KEY }}"; got != want {
					t.Errorf("step env DEPLOY_KEY = %q, want %q (for the agent)", got, want)
				}
				if got, want := req.Steps[1].Env["LEVEL"], "3"; got != want {
					t.Errorf("step env LEVEL (vars) = %q, want %q", got, want)
				}
				if got, want := req.Env["LEG"], "omnios-r151056-1.21"; got != want {
					t.Errorf("env LEG = %q, want %q", got, want)
				}
				if got, want := req.Outputs["bin"], "${{ steps.b.outputs.bin }}"; got != want {
					t.Errorf("outputs.bin = %q, want %q", got, want)
				}
				if req.TimeoutMinutes != 30 {
					t.Errorf("TimeoutMinutes = %v, want 30", req.TimeoutMinutes)
				}
				if req.Checkout.FetchDepth == nil || *req.Checkout.FetchDepth != 0 {
					t.Errorf("Checkout.FetchDepth = %v, want 0", req.Checkout.FetchDepth)
				}
			},
		},
		{
			name:    "needs outputs and results",
			payload: "matrix.yaml",
			edit: func(task *runnerv1.Task) {
				task.Needs["lint"] = &runnerv1.TaskNeed{Result: runnerv1.Result_RESULT_SUCCESS, Outputs: map[string]string{"report": "ok"}}
			},
			check: func(t *testing.T, req jobspec.JobRequest, _ jobspec.Secrets) {
				needs := req.Contexts["needs"]
				if got := ctxPath(needs, "setup", "result"); got != "success" {
					t.Errorf("needs.setup.result = %#v, want success", got)
				}
				if got := ctxPath(needs, "setup", "outputs", "lib"); got != "libwidget.so" {
					t.Errorf("needs.setup.outputs.lib = %#v, want libwidget.so", got)
				}
				if got := ctxPath(needs, "lint", "outputs", "report"); got != "ok" {
					t.Errorf("needs.lint.outputs.report = %#v, want ok", got)
				}
			},
		},
		{
			name:    "request fields and github context",
			payload: "matrix.yaml",
			check: func(t *testing.T, req jobspec.JobRequest, _ jobspec.Secrets) {
				if req.Version != jobspec.Version {
					t.Errorf("Version = %d, want %d", req.Version, jobspec.Version)
				}
				if _, err := uuid.Parse(req.JobID); err != nil {
					t.Errorf("JobID %q: %v", req.JobID, err)
				}
				want := jobspec.Source{Platform: jobspec.PlatformForgejo, Instance: testRunnerUUID, TaskID: "42"}
				if req.Source != want {
					t.Errorf("Source = %+v, want %+v", req.Source, want)
				}
				if req.Project != "acme/widget" || req.CommitSHA != testSHA || req.Ref != "refs/heads/main" {
					t.Errorf("Project, CommitSHA, Ref = %q, %q, %q", req.Project, req.CommitSHA, req.Ref)
				}
				if got, want := req.RepoURL, "http://127.0.0.1:3300/acme/widget.git"; got != want {
					t.Errorf("RepoURL = %q, want %q", got, want)
				}
				gh := req.Contexts["github"]
				for k, want := range map[string]any{
					"workspace":        "/root/work",
					"server_url":       "http://127.0.0.1:3300",
					"api_url":          "http://127.0.0.1:3300/api/v1",
					"run_id":           "12",
					"run_number":       "3",
					"actor":            "alice",
					"ref_name":         "main",
					"workflow":         "ci.yml",
					"job":              "build",
					"retention_days":   "90",
					"repository_owner": "acme",
				} {
					if got := ctxPath(gh, k); got != want {
						t.Errorf("github.%s = %#v, want %#v", k, got, want)
					}
				}
				if got := ctxPath(gh, "event", "repository", "id"); got != 7.0 {
					t.Errorf("github.event.repository.id = %#v, want the server's event", got)
				}
				for _, k := range []string{"token", "gitea_runtime_token"} {
					if v, ok := gh.(map[string]any)[k]; ok {
						t.Errorf("github.%s = %v travels in the clear", k, v)
					}
				}
			},
		},
		{
			name:    "secrets sealed and masked",
			payload: "matrix.yaml",
			check: func(t *testing.T, req jobspec.JobRequest, s jobspec.Secrets) {
				if s.Token != testToken {
					t.Errorf("Token = %q, want %q", s.Token, testToken)
				}
				if s.Secrets["DEPLOY_KEY"] != testDeployKey {
					t.Errorf("Secrets = %v, want DEPLOY_KEY", s.Secrets)
				}
				for _, want := range []string{testToken, testRuntimeToken, testDeployKey} {
					if !slices.Contains(s.Mask, want) {
						t.Errorf("Mask = %q, want it to hold %q", s.Mask, want)
					}
				}
				body, err := json.Marshal(req)
				if err != nil {
					t.Fatal(err)
				}
				for _, secret := range []string{testToken, testRuntimeToken, testDeployKey} {
					if strings.Contains(string(body), secret) {
						t.Errorf("the request holds %q in the clear", secret)
					}
				}
			},
		},
		{
			name:    "token from the context only",
			payload: "plain.yaml",
			edit: func(task *runnerv1.Task) {
				task.Secrets = map[string]string{"API": "k3y"}
			},
			check: func(t *testing.T, _ jobspec.JobRequest, s jobspec.Secrets) {
				if s.Token != testToken {
					t.Errorf("Token = %q, want the context's token", s.Token)
				}
				for _, name := range []string{"GITHUB_TOKEN", "GITEA_TOKEN", "FORGEJO_TOKEN"} {
					if s.Secrets[name] != testToken {
						t.Errorf("secrets.%s = %q, want the token", name, s.Secrets[name])
					}
				}
				for _, want := range []string{testToken, testRuntimeToken, "k3y"} {
					if !slices.Contains(s.Mask, want) {
						t.Errorf("Mask = %q, want it to hold %q", s.Mask, want)
					}
				}
			},
		},
		{
			name:    "FORGEJO_TOKEN preferred",
			payload: "plain.yaml",
			edit: func(task *runnerv1.Task) {
				task.Secrets["FORGEJO_TOKEN"] = "forgejo-token"
				task.Secrets["GITEA_TOKEN"] = "gitea-token"
			},
			check: func(t *testing.T, _ jobspec.JobRequest, s jobspec.Secrets) {
				if s.Token != "forgejo-token" {
					t.Errorf("Token = %q, want forgejo-token", s.Token)
				}
				for _, want := range []string{"forgejo-token", "gitea-token", testToken} {
					if !slices.Contains(s.Mask, want) {
						t.Errorf("Mask = %q, want it to hold %q", s.Mask, want)
					}
				}
			},
		},
		{
			name:    "if true",
			payload: "skip.yaml",
			edit: func(task *runnerv1.Task) {
				task.Needs = map[string]*runnerv1.TaskNeed{"build": {Result: runnerv1.Result_RESULT_SUCCESS, Outputs: map[string]string{"bin": "w.bin"}}}
			},
			check: func(t *testing.T, req jobspec.JobRequest, _ jobspec.Secrets) {
				if got, want := req.Steps[0].Run, "echo deploying w.bin"; got != want {
					t.Errorf("run = %q, want %q", got, want)
				}
				if got, want := req.RunsOn, "linux-test"; got != want {
					t.Errorf("RunsOn = %q, want %q", got, want)
				}
			},
		},
		{
			name:    "always with failed and cancelled needs",
			payload: "always.yaml",
			edit: func(task *runnerv1.Task) {
				task.Needs = map[string]*runnerv1.TaskNeed{
					"build": {Result: runnerv1.Result_RESULT_FAILURE},
					"test":  {Result: runnerv1.Result_RESULT_CANCELLED},
				}
			},
			check: func(t *testing.T, req jobspec.JobRequest, _ jobspec.Secrets) {
				if got, want := req.Steps[0].Run, `echo "build failure, test cancelled"`; got != want {
					t.Errorf("run = %q, want %q", got, want)
				}
			},
		},
		{
			name:    "server_url from the instance",
			payload: "plain.yaml",
			edit: func(task *runnerv1.Task) {
				delete(task.Context.Fields, "server_url")
				delete(task.Context.Fields, "api_url")
			},
			check: func(t *testing.T, req jobspec.JobRequest, _ jobspec.Secrets) {
				if got, want := req.RepoURL, "https://forge.example/acme/widget.git"; got != want {
					t.Errorf("RepoURL = %q, want %q", got, want)
				}
				if got, want := ctxPath(req.Contexts["github"], "api_url"), "https://forge.example/api/v1"; got != want {
					t.Errorf("github.api_url = %#v, want %q", got, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			task := newTask(t, tt.payload)
			if tt.edit != nil {
				tt.edit(task)
			}
			sealer := newTestSealer(t)
			req, err := TranslateTask(TaskInput{
				Task:      task,
				Instance:  testRunnerUUID,
				Labels:    []string{"linux-test", "omnios-r151056"},
				Sealer:    sealer,
				ServerURL: "https://forge.example/",
			})
			if err != nil {
				t.Fatalf("TranslateTask: %v", err)
			}
			var s jobspec.Secrets
			if err := sealer.Open(req.JobID, req.Secrets, &s); err != nil {
				t.Fatalf("opening the secrets: %v", err)
			}
			tt.check(t, req, s)
		})
	}
}

func TestTranslateTaskErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		payload string
		edit    func(*TaskInput)
		wantIs  error
		want    []string // substrings of the error
	}{
		{name: "uses refused", payload: "uses.yaml", want: []string{"task 42", `job "lint"`, "step 2", "actions/setup-go@v5"}},
		{name: "services refused", payload: "services.yaml", want: []string{"task 42", `job "integration"`, "services:"}},
		{name: "two jobs", payload: "two-jobs.yaml", want: []string{"task 42", "2 jobs", "a, b"}},
		{
			name: "label not served", payload: "matrix.yaml",
			edit: func(in *TaskInput) { in.Labels = []string{"linux-test"} },
			want: []string{"task 42", `job "build"`, "omnios-r151056", "linux-test"},
		},
		{
			name: "if false by vars", payload: "skip.yaml",
			edit: func(in *TaskInput) {
				in.Task.Vars["DEPLOY"] = "no"
				in.Task.Needs = map[string]*runnerv1.TaskNeed{"build": {Result: runnerv1.Result_RESULT_SUCCESS}}
			},
			wantIs: ErrSkipped, want: []string{"task 42", `job "deploy"`},
		},
		{
			name: "need failed", payload: "plain.yaml",
			edit: func(in *TaskInput) {
				in.Task.Needs = map[string]*runnerv1.TaskNeed{"build": {Result: runnerv1.Result_RESULT_FAILURE}}
			},
			wantIs: ErrSkipped, want: []string{"task 42", `job "test"`},
		},
		{
			name: "matrix of two legs", payload: "matrix.yaml",
			edit: func(in *TaskInput) {
				in.Task.WorkflowPayload = []byte(strings.Replace(string(in.Task.WorkflowPayload), `- "1.21"`, `- "1.21"`+"\n        - \"1.22\"", 1))
			},
			want: []string{"task 42", "2 combinations"},
		},
		{
			name: "not YAML", payload: "plain.yaml",
			edit: func(in *TaskInput) { in.Task.WorkflowPayload = []byte("jobs: [") },
			want: []string{"task 42", "ci.yml"},
		},
		{
			name: "empty payload", payload: "plain.yaml",
			edit: func(in *TaskInput) { in.Task.WorkflowPayload = nil },
			want: []string{"task 42"},
		},
		{
			name: "no repository", payload: "plain.yaml",
			edit: func(in *TaskInput) { delete(in.Task.Context.Fields, "repository") },
			want: []string{"task 42", "repository"},
		},
		{
			name: "no sealer", payload: "plain.yaml",
			edit: func(in *TaskInput) { in.Sealer = nil },
			want: []string{"task 42", "sealer"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			in := TaskInput{
				Task:     newTask(t, tt.payload),
				Instance: testRunnerUUID,
				Labels:   []string{"linux-test", "omnios-r151056"},
				Sealer:   newTestSealer(t),
			}
			if tt.edit != nil {
				tt.edit(&in)
			}
			_, err := TranslateTask(in)
			if err == nil {
				t.Fatal("TranslateTask succeeded, want an error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q is not %v", err, tt.wantIs)
			}
			if tt.wantIs == nil && errors.Is(err, ErrSkipped) {
				t.Errorf("error %q is ErrSkipped", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not hold %q", err, w)
				}
			}
		})
	}
}

func TestTranslateTaskNoTask(t *testing.T) {
	t.Parallel()
	if _, err := TranslateTask(TaskInput{Sealer: newTestSealer(t)}); err == nil {
		t.Fatal("TranslateTask without a task succeeded")
	}
}

func TestResultName(t *testing.T) {
	t.Parallel()
	for r, want := range map[runnerv1.Result]string{
		runnerv1.Result_RESULT_SUCCESS:   "success",
		runnerv1.Result_RESULT_FAILURE:   "failure",
		runnerv1.Result_RESULT_CANCELLED: "cancelled",
		runnerv1.Result_RESULT_SKIPPED:   "skipped",
	} {
		if got := resultName(r); got != want {
			t.Errorf("resultName(%v) = %q, want %q", r, got, want)
		}
	}
}

func FuzzTranslateTask(f *testing.F) {
	payloads, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range payloads {
		if filepath.Base(p) == "catalog.yaml" {
			continue
		}
		src, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	sealer := newTestSealer(f)
	f.Fuzz(func(t *testing.T, payload []byte) {
		task := newTask(t, "plain.yaml")
		task.WorkflowPayload = payload
		req, err := TranslateTask(TaskInput{
			Task:     task,
			Instance: testRunnerUUID,
			Labels:   []string{"linux-test", "omnios-r151056"},
			Sealer:   sealer,
		})
		if err != nil {
			if !strings.Contains(err.Error(), "task 42") {
				t.Errorf("error %q does not name the task", err)
			}
			return
		}
		if req.JobID == "" || req.RunsOn == "" {
			t.Errorf("request without a job id or a label: %+v", req)
		}
	})
}
