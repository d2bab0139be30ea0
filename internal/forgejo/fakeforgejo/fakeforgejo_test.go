package fakeforgejo

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	"code.gitea.io/actions-proto-go/ping/v1/pingv1connect"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const twoStepPayload = `name: test
on: push
jobs:
  build:
    name: build
    runs-on: self
    steps:
      - name: first
        run: echo one
      - run: |
          echo two
          echo three
`

// authHeaders is a client interceptor adding the runner credentials.
func authHeaders(id, token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if id != "" {
				req.Header().Set(HeaderRunnerUUID, id)
			}
			if token != "" {
				req.Header().Set(HeaderRunnerToken, token)
			}
			return next(ctx, req)
		}
	}
}

func client(base, id, token string) runnerv1connect.RunnerServiceClient {
	return runnerv1connect.NewRunnerServiceClient(http.DefaultClient, base+APIPrefix,
		connect.WithInterceptors(authHeaders(id, token)))
}

// registered registers a runner with labels and returns an authenticated client.
func registered(t *testing.T, base string, labels ...string) (runnerv1connect.RunnerServiceClient, *runnerv1.Runner) {
	t.Helper()
	res, err := client(base, "", "").Register(t.Context(), connect.NewRequest(&runnerv1.RegisterRequest{
		Name: "r", Token: DefaultRegistrationToken, Version: "v1", Labels: labels,
	}))
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	r := res.Msg.GetRunner()
	return client(base, r.GetUuid(), r.GetToken()), r
}

func fetch(t *testing.T, c runnerv1connect.RunnerServiceClient, version int64) *runnerv1.FetchTaskResponse {
	t.Helper()
	res, err := c.FetchTask(t.Context(), connect.NewRequest(&runnerv1.FetchTaskRequest{TasksVersion: version}))
	if err != nil {
		t.Fatalf("FetchTask: %v", err)
	}
	return res.Msg
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", code)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("got code %v (%v), want %v", got, err, code)
	}
}

func logRows(contents ...string) []*runnerv1.LogRow {
	rows := make([]*runnerv1.LogRow, len(contents))
	for i, c := range contents {
		rows[i] = &runnerv1.LogRow{Time: timestamppb.Now(), Content: c}
	}
	return rows
}

func TestPing(t *testing.T) {
	base := New(Options{}).Start(t)
	c := pingv1connect.NewPingServiceClient(http.DefaultClient, base+APIPrefix)
	res, err := c.Ping(t.Context(), connect.NewRequest(&pingv1.PingRequest{Data: "runner"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Msg.GetData(); got != "Hello, runner!" {
		t.Errorf("Ping = %q", got)
	}
}

func TestRegister(t *testing.T) {
	s := New(Options{RegistrationToken: "good"})
	base := s.Start(t)
	tests := []struct {
		name       string
		req        *runnerv1.RegisterRequest
		wantCode   connect.Code // 0 = success
		wantLabels []string
	}{
		{"good token", &runnerv1.RegisterRequest{Name: "a", Token: "good", Version: "v9", Labels: []string{"self", "docker"}}, 0, []string{"self", "docker"}},
		{"token is reusable", &runnerv1.RegisterRequest{Name: "b", Token: "good", Labels: []string{"x"}}, 0, []string{"x"}},
		{"deprecated labels", &runnerv1.RegisterRequest{Name: "c", Token: "good", AgentLabels: []string{"a"}, CustomLabels: []string{"b"}}, 0, []string{"a", "b"}},
		{"bad token", &runnerv1.RegisterRequest{Name: "d", Token: "bad"}, connect.CodeInvalidArgument, nil},
		{"empty token", &runnerv1.RegisterRequest{Name: "e"}, connect.CodeInvalidArgument, nil},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := client(base, "", "").Register(t.Context(), connect.NewRequest(tt.req))
			if tt.wantCode != 0 {
				wantCode(t, err, tt.wantCode)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r := res.Msg.GetRunner()
			if _, err := uuid.Parse(r.GetUuid()); err != nil || seen[r.GetUuid()] {
				t.Errorf("uuid %q invalid or reused", r.GetUuid())
			}
			seen[r.GetUuid()] = true
			if r.GetToken() == "" || r.GetId() == 0 || r.GetName() != tt.req.Name || r.GetVersion() != tt.req.Version {
				t.Errorf("runner = %v", r)
			}
			if strings.Join(r.GetLabels(), ",") != strings.Join(tt.wantLabels, ",") {
				t.Errorf("labels = %v, want %v", r.GetLabels(), tt.wantLabels)
			}
			// The credentials work.
			if _, err := client(base, r.GetUuid(), r.GetToken()).FetchTask(t.Context(), connect.NewRequest(&runnerv1.FetchTaskRequest{})); err != nil {
				t.Errorf("FetchTask with new credentials: %v", err)
			}
		})
	}
	if got := len(s.Runners()); got != 3 {
		t.Errorf("%d runners, want 3", got)
	}
}

func TestUnauthenticated(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	_, r := registered(t, base, "self")
	tests := []struct {
		name, id, token string
	}{
		{"no headers", "", ""},
		{"no token", r.GetUuid(), ""},
		{"wrong token", r.GetUuid(), "0000"},
		{"unknown uuid", uuid.NewString(), r.GetToken()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := client(base, tt.id, tt.token)
			calls := map[string]func() error{
				"Declare": func() error {
					_, err := c.Declare(t.Context(), connect.NewRequest(&runnerv1.DeclareRequest{}))
					return err
				},
				"FetchTask": func() error {
					_, err := c.FetchTask(t.Context(), connect.NewRequest(&runnerv1.FetchTaskRequest{}))
					return err
				},
				"UpdateTask": func() error {
					_, err := c.UpdateTask(t.Context(), connect.NewRequest(&runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: 1}}))
					return err
				},
				"UpdateLog": func() error {
					_, err := c.UpdateLog(t.Context(), connect.NewRequest(&runnerv1.UpdateLogRequest{TaskId: 1}))
					return err
				},
			}
			for name, call := range calls {
				err := call()
				wantCode(t, err, connect.CodeUnauthenticated)
				var ce *connect.Error
				if !errors.As(err, &ce) || ce.Message() != "unregistered runner" {
					t.Errorf("%s: error %v, want message %q", name, err, "unregistered runner")
				}
			}
		})
	}
}

func TestDeclare(t *testing.T) {
	for _, noDeclare := range []bool{false, true} {
		s := New(Options{NoDeclare: noDeclare})
		base := s.Start(t)
		c, r := registered(t, base, "old")
		res, err := c.Declare(t.Context(), connect.NewRequest(&runnerv1.DeclareRequest{Version: "v2", Labels: []string{"new", "self"}}))
		if noDeclare {
			wantCode(t, err, connect.CodeUnimplemented)
			if rv := s.Runners()[0]; rv.Declared || rv.Labels[0] != "old" {
				t.Errorf("NoDeclare: runner changed: %+v", rv)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got := res.Msg.GetRunner()
		if got.GetToken() != "" || got.GetUuid() != r.GetUuid() || got.GetVersion() != "v2" || strings.Join(got.GetLabels(), ",") != "new,self" {
			t.Errorf("Declare runner = %v", got)
		}
		rv := s.Runners()[0]
		if !rv.Declared || rv.Version != "v2" || strings.Join(rv.Labels, ",") != "new,self" {
			t.Errorf("runner view = %+v", rv)
		}
		// The declared labels are used for matching.
		id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"new"}})
		if task := fetch(t, c, 0).GetTask(); task.GetId() != id {
			t.Errorf("got task %v, want %d", task, id)
		}
	}
}

func TestTasksVersion(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")

	if res := fetch(t, c, 0); res.GetTask() != nil || res.GetTasksVersion() != 0 {
		t.Fatalf("empty server: %v", res)
	}
	id1 := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	if s.TasksVersion() != 1 {
		t.Fatalf("tasks_version = %d, want 1", s.TasksVersion())
	}
	// The runner claims to know version 1: no task, although one waits.
	if res := fetch(t, c, 1); res.GetTask() != nil || res.GetTasksVersion() != 1 {
		t.Fatalf("current version: %v", res)
	}
	// Version 0 forces a lookup.
	res := fetch(t, c, 0)
	if res.GetTask().GetId() != id1 || res.GetTasksVersion() != 1 {
		t.Fatalf("version 0: %v", res)
	}
	// A new job bumps the version; the old version gets it.
	id2 := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	res = fetch(t, c, 1)
	if res.GetTask().GetId() != id2 || res.GetTasksVersion() != 2 {
		t.Fatalf("old version: %v", res)
	}
	// Nothing left.
	if res := fetch(t, c, 0); res.GetTask() != nil {
		t.Fatalf("drained: %v", res)
	}
	// Cancel bumps too.
	id3 := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"nobody"}})
	s.Cancel(id3)
	if s.TasksVersion() != 4 {
		t.Errorf("tasks_version = %d, want 4", s.TasksVersion())
	}
	if id1 != 1 || id2 != 2 || id3 != 3 {
		t.Errorf("ids %d %d %d", id1, id2, id3)
	}
}

func TestLabelMatching(t *testing.T) {
	tests := []struct {
		name         string
		runnerLabels []string
		runsOn       []string
		want         bool
	}{
		{"subset", []string{"self", "ubuntu-latest"}, []string{"self"}, true},
		{"all", []string{"self", "ubuntu-latest"}, []string{"ubuntu-latest", "self"}, true},
		{"one missing", []string{"self", "ubuntu-latest"}, []string{"self", "gpu"}, false},
		{"empty runs-on", []string{"self", "ubuntu-latest"}, nil, false},
		{"label with schema", []string{"ubuntu-latest:docker://node:22-bookworm", "self:host"}, []string{"ubuntu-latest", "self"}, true},
		{"runner without labels", nil, []string{"self"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(Options{})
			base := s.Start(t)
			c, _ := registered(t, base, tt.runnerLabels...)
			id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: tt.runsOn})
			task := fetch(t, c, 0).GetTask()
			if got := task != nil; got != tt.want {
				t.Fatalf("got task %v, want %v", got, tt.want)
			}
			if tt.want && task.GetId() != id {
				t.Errorf("task id %d, want %d", task.GetId(), id)
			}
			if v := s.Task(id); v.Picked != tt.want {
				t.Errorf("Picked = %v", v.Picked)
			}
		})
	}
}

func TestOldestMatchingFirst(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, r := registered(t, base, "self")
	gpu := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"gpu"}})
	a := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	cancelled := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	b := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	s.Cancel(cancelled)
	for _, want := range []int64{a, b} {
		if got := fetch(t, c, 0).GetTask().GetId(); got != want {
			t.Fatalf("got task %d, want %d", got, want)
		}
		if v := s.Task(want); !v.Picked || v.RunnerUUID != r.GetUuid() || v.Started.IsZero() || v.LastUpdate.IsZero() {
			t.Errorf("task view %+v", v)
		}
	}
	if task := fetch(t, c, 0).GetTask(); task != nil {
		t.Errorf("got %v, want nothing", task.GetId())
	}
	if s.Task(gpu).Picked || s.Task(cancelled).Picked {
		t.Error("gpu or cancelled job was picked")
	}
}

func TestOfflineRunner(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	const secret = "7c31591e8b67225a116d4a4519ea8e507e08f71f"
	id := s.AddOfflineRunner(secret, "offline", []string{"self"})
	want, _ := uuid.FromBytes([]byte(secret[:16]))
	if id != want.String() || id != "37633331-3539-3165-3862-363732323561" {
		t.Fatalf("uuid = %s, want %s", id, want)
	}
	c := client(base, id, secret)
	taskID := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	if got := fetch(t, c, 0).GetTask().GetId(); got != taskID {
		t.Fatalf("offline runner got task %d", got)
	}
	// Registering again updates the runner in place.
	if again := s.AddOfflineRunner(secret, "renamed", []string{"a", "b"}); again != id {
		t.Errorf("uuid changed to %s", again)
	}
	rs := s.Runners()
	if len(rs) != 1 || !rs[0].Offline || rs[0].Name != "renamed" || rs[0].Token != secret || len(rs[0].Labels) != 2 {
		t.Errorf("runners = %+v", rs)
	}
}

func TestTaskContent(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	needs := map[string]*runnerv1.TaskNeed{"a": {Outputs: map[string]string{"o": "1"}, Result: runnerv1.Result_RESULT_SUCCESS}}
	id := s.AddJob(JobSpec{
		Payload: twoStepPayload,
		RunsOn:  []string{"self"},
		Context: map[string]any{"event_name": "workflow_dispatch", "event": map[string]any{"inputs": map[string]any{"n": 3}}, "list": []string{"x"}},
		Secrets: map[string]string{"S": "secret"},
		Vars:    map[string]string{"V": "var"},
		Needs:   needs,
	})
	task := fetch(t, c, 0).GetTask()
	if string(task.GetWorkflowPayload()) != twoStepPayload {
		t.Errorf("payload = %q", task.GetWorkflowPayload())
	}
	ctx := task.GetContext().AsMap()
	v := s.Task(id)
	if len(v.Token) != 40 || ctx["token"] != v.Token {
		t.Errorf("token %q, context token %v", v.Token, ctx["token"])
	}
	for _, k := range []string{"GITHUB_TOKEN", "GITEA_TOKEN", "FORGEJO_TOKEN"} {
		if task.GetSecrets()[k] != v.Token {
			t.Errorf("secret %s = %q", k, task.GetSecrets()[k])
		}
	}
	if task.GetSecrets()["S"] != "secret" || task.GetVars()["V"] != "var" {
		t.Errorf("secrets %v vars %v", task.GetSecrets(), task.GetVars())
	}
	if n := task.GetNeeds()["a"]; n.GetResult() != runnerv1.Result_RESULT_SUCCESS || n.GetOutputs()["o"] != "1" {
		t.Errorf("needs = %v", task.GetNeeds())
	}
	wantStr := map[string]string{
		"event_name":                "workflow_dispatch",
		"server_url":                base,
		"api_url":                   base + "/api/v1",
		"gitea_default_actions_url": DefaultActionsURL,
		"job":                       "build",
		"ref":                       "refs/heads/main",
		"ref_name":                  "main",
		"ref_type":                  "branch",
		"repository":                "fake-owner/fake-repo",
		"repository_owner":          "fake-owner",
		"run_attempt":               "1",
		"action":                    "",
		"workspace":                 "",
		"graphql_url":               "",
		"retention_days":            "",
	}
	for k, want := range wantStr {
		if got, ok := ctx[k].(string); !ok || got != want {
			t.Errorf("context[%s] = %#v, want %q", k, ctx[k], want)
		}
	}
	for _, k := range []string{"sha", "gitea_runtime_token", "actor", "run_id", "run_number", "workflow"} {
		if s, _ := ctx[k].(string); s == "" {
			t.Errorf("context[%s] empty", k)
		}
	}
	inputs := ctx["event"].(map[string]any)["inputs"].(map[string]any)
	if n, ok := inputs["n"].(float64); !ok || n != 3 {
		t.Errorf("event.inputs.n = %#v, want float64 3", inputs["n"])
	}
	if l, ok := ctx["list"].([]any); !ok || len(l) != 1 {
		t.Errorf("list = %#v", ctx["list"])
	}
	if len(v.Steps) != 2 || v.Steps[0].Name != "first" || v.Steps[1].Name != "Run echo two" || v.JobID != "build" {
		t.Errorf("steps %+v job %q", v.Steps, v.JobID)
	}
}

func TestUnparsablePayload(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	for _, payload := range []string{"jobs: [", "jobs:\n  a:\n    steps: []\n  b:\n    steps: []\n", "jobs:\n  a:\n    steps: nope\n"} {
		id := s.AddJob(JobSpec{Payload: payload, RunsOn: []string{"self"}})
		task := fetch(t, c, 0).GetTask()
		if task.GetId() != id || string(task.GetWorkflowPayload()) != payload {
			t.Errorf("payload %q: got task %v", payload, task)
		}
		if n := len(s.Task(id).Steps); n != 0 {
			t.Errorf("payload %q: %d steps", payload, n)
		}
	}
}

func TestUpdateLog(t *testing.T) {
	for _, fixed := range []bool{false, true} {
		s := New(Options{FixedEmptyNoMore: fixed})
		base := s.Start(t)
		c, _ := registered(t, base, "self")
		id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
		fetch(t, c, 0)

		type step struct {
			name         string
			index        int64
			rows         []string
			noMore       bool
			wantAck      int64
			wantCode     connect.Code
			wantArchived bool
		}
		steps := []step{
			{name: "first rows", index: 0, rows: []string{"r0", "r1", "r2"}, wantAck: 3},
			{name: "gap", index: 5, rows: []string{"r5", "r6"}, wantAck: 3},
			{name: "overlap", index: 2, rows: []string{"x2", "r3", "r4"}, wantAck: 5},
			{name: "already stored", index: 0, rows: []string{"y0", "y1"}, wantAck: 5},
			{name: "empty", index: 5, wantAck: 5},
			{name: "empty no_more", index: 5, noMore: true, wantAck: 5, wantArchived: fixed},
		}
		if !fixed {
			steps = append(steps,
				step{name: "no_more with a row", index: 5, rows: []string{""}, noMore: true, wantAck: 6, wantArchived: true},
				step{name: "new row after archive", index: 6, rows: []string{"late"}, wantCode: connect.CodeAlreadyExists, wantArchived: true},
				step{name: "resent rows after archive", index: 4, rows: []string{"r4", ""}, wantAck: 6, wantArchived: true},
			)
		} else {
			steps = append(steps,
				step{name: "new row after archive", index: 5, rows: []string{"late"}, wantCode: connect.CodeAlreadyExists, wantArchived: true},
			)
		}
		for _, st := range steps {
			res, err := c.UpdateLog(t.Context(), connect.NewRequest(&runnerv1.UpdateLogRequest{
				TaskId: id, Index: st.index, Rows: logRows(st.rows...), NoMore: st.noMore,
			}))
			if st.wantCode != 0 {
				wantCode(t, err, st.wantCode)
			} else if err != nil {
				t.Fatalf("fixed=%v %s: %v", fixed, st.name, err)
			} else if res.Msg.GetAckIndex() != st.wantAck {
				t.Errorf("fixed=%v %s: ack %d, want %d", fixed, st.name, res.Msg.GetAckIndex(), st.wantAck)
			}
			if got := s.Task(id).Archived; got != st.wantArchived {
				t.Errorf("fixed=%v %s: archived %v, want %v", fixed, st.name, got, st.wantArchived)
			}
		}
		v := s.Task(id)
		var contents []string
		for _, r := range v.Rows {
			contents = append(contents, r.Content)
			if r.Time.IsZero() || r.Received.IsZero() {
				t.Errorf("row %+v lacks times", r)
			}
		}
		want := "r0,r1,r2,r3,r4"
		if !fixed {
			want += ","
		}
		if got := strings.Join(contents, ","); got != want {
			t.Errorf("fixed=%v: rows %q, want %q", fixed, got, want)
		}
		if v.Calls["UpdateLog"] != len(steps) {
			t.Errorf("UpdateLog calls = %d, want %d", v.Calls["UpdateLog"], len(steps))
		}
	}
}

func TestUpdateLogContent(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	fetch(t, c, 0)
	long := strings.Repeat("a", MaxLogRowSize+10)
	if _, err := c.UpdateLog(t.Context(), connect.NewRequest(&runnerv1.UpdateLogRequest{
		TaskId: id, Rows: []*runnerv1.LogRow{{Content: "a\nb"}, {Content: long}},
	})); err != nil {
		t.Fatal(err)
	}
	v := s.Task(id)
	if v.Rows[0].Content != `a\nb` || !v.Rows[0].Time.IsZero() {
		t.Errorf("row 0 = %+v", v.Rows[0])
	}
	if len(v.Rows[1].Content) != MaxLogRowSize {
		t.Errorf("row 1 has %d bytes", len(v.Rows[1].Content))
	}
}

func TestTaskOfAnotherRunner(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c1, _ := registered(t, base, "self")
	c2, _ := registered(t, base, "self")
	id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	waiting := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"nobody"}})
	fetch(t, c1, 0)
	for _, taskID := range []int64{id, waiting, 99} {
		_, err := c2.UpdateLog(t.Context(), connect.NewRequest(&runnerv1.UpdateLogRequest{TaskId: taskID, Rows: logRows("x")}))
		wantCode(t, err, connect.CodeNotFound)
		_, err = c2.UpdateTask(t.Context(), connect.NewRequest(&runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: taskID}}))
		wantCode(t, err, connect.CodeNotFound)
	}
	if v := s.Task(id); len(v.Rows) != 0 || v.Calls["UpdateLog"] != 0 {
		t.Errorf("task changed: %+v", v)
	}
}

func TestUpdateTask(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	fetch(t, c, 0)
	update := func(st *runnerv1.TaskState, outputs map[string]string) *runnerv1.UpdateTaskResponse {
		t.Helper()
		res, err := c.UpdateTask(t.Context(), connect.NewRequest(&runnerv1.UpdateTaskRequest{State: st, Outputs: outputs}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	started := time.Now().Add(-time.Second).Truncate(time.Millisecond)
	longKey := strings.Repeat("k", MaxOutputKeyLen+1)
	res := update(&runnerv1.TaskState{Id: id, Steps: []*runnerv1.StepState{
		{Id: 0, Result: runnerv1.Result_RESULT_SUCCESS, StartedAt: timestamppb.New(started), StoppedAt: timestamppb.Now(), LogIndex: 1, LogLength: 2},
		{Id: 1, StartedAt: timestamppb.Now(), LogIndex: 3},
		{Id: 2}, {Id: -1},
	}}, map[string]string{
		"a":                      "1",
		longKey:                  "dropped",
		strings.Repeat("k", 255): "kept",
		"big":                    strings.Repeat("v", MaxOutputValueLen+1),
		"max":                    strings.Repeat("v", MaxOutputValueLen),
	})
	if res.GetState().GetId() != id || res.GetState().GetResult() != runnerv1.Result_RESULT_UNSPECIFIED {
		t.Errorf("state = %v", res.GetState())
	}
	wantSent := "a,k" + strings.Repeat("k", 254) + ",max"
	if got := strings.Join(res.GetSentOutputs(), ","); got != wantSent {
		t.Errorf("sent_outputs = %.40q…", got)
	}
	v := s.Task(id)
	if v.StepIDErrors != 2 {
		t.Errorf("StepIDErrors = %d, want 2", v.StepIDErrors)
	}
	s0, s1 := v.Steps[0], v.Steps[1]
	if s0.Result != runnerv1.Result_RESULT_SUCCESS || !s0.Started.Equal(started) || s0.Stopped.IsZero() || s0.LogIndex != 1 || s0.LogLength != 2 || !s0.Reported {
		t.Errorf("step 0 = %+v", s0)
	}
	if s1.Result != runnerv1.Result_RESULT_UNSPECIFIED || s1.Started.IsZero() || !s1.Stopped.IsZero() || s1.LogIndex != 3 {
		t.Errorf("step 1 = %+v", s1)
	}

	// Outputs are inserted only if absent; sent_outputs lists all of them.
	res = update(&runnerv1.TaskState{Id: id}, map[string]string{"a": "changed", "b": "2"})
	if got := strings.Join(res.GetSentOutputs(), ","); !strings.HasPrefix(got, "a,b,k") {
		t.Errorf("sent_outputs = %.20q…", got)
	}
	if v := s.Task(id); v.Outputs["a"] != "1" || v.Outputs["b"] != "2" || v.Done() {
		t.Errorf("outputs = %v, done = %v", v.Outputs, v.Done())
	}

	// Final result before the log is archived: recorded, flagged.
	res = update(&runnerv1.TaskState{Id: id, Result: runnerv1.Result_RESULT_SUCCESS}, nil)
	if res.GetState().GetResult() != runnerv1.Result_RESULT_SUCCESS {
		t.Errorf("final state = %v", res.GetState())
	}
	v = s.Task(id)
	if v.Status != runnerv1.Result_RESULT_SUCCESS || v.FinalAt.IsZero() || !v.ResultBeforeArchive || v.ReportedResult != runnerv1.Result_RESULT_SUCCESS {
		t.Errorf("after final: %+v", v)
	}
	// A done task: no-op, the stored result is returned.
	lastUpdate := v.LastUpdate
	res = update(&runnerv1.TaskState{Id: id, Result: runnerv1.Result_RESULT_FAILURE, Steps: []*runnerv1.StepState{{Id: 0, Result: runnerv1.Result_RESULT_FAILURE}}}, nil)
	v = s.Task(id)
	if res.GetState().GetResult() != runnerv1.Result_RESULT_SUCCESS || v.Status != runnerv1.Result_RESULT_SUCCESS ||
		v.Steps[0].Result != runnerv1.Result_RESULT_SUCCESS || !v.LastUpdate.Equal(lastUpdate) || v.Calls["UpdateTask"] != 4 {
		t.Errorf("no-op update changed the task: %v %+v", res.GetState(), v)
	}
}

func TestArchiveThenResult(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	fetch(t, c, 0)
	if _, err := c.UpdateLog(t.Context(), connect.NewRequest(&runnerv1.UpdateLogRequest{TaskId: id, Rows: logRows("done"), NoMore: true})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateTask(t.Context(), connect.NewRequest(&runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: id, Result: runnerv1.Result_RESULT_FAILURE}})); err != nil {
		t.Fatal(err)
	}
	v, err := s.WaitTask(t.Context(), id, TaskView.Done)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != runnerv1.Result_RESULT_FAILURE || !v.Archived || v.ResultBeforeArchive {
		t.Errorf("task = %+v", v)
	}
}

func TestCancel(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	fetch(t, c, 0)

	done := make(chan TaskView, 1)
	go func() {
		v, _ := s.WaitTask(t.Context(), id, TaskView.Done)
		done <- v
	}()
	s.Cancel(id)
	if v := <-done; v.Status != runnerv1.Result_RESULT_CANCELLED || v.FinalAt.IsZero() {
		t.Fatalf("after Cancel: %+v", v)
	}
	res, err := c.UpdateTask(t.Context(), connect.NewRequest(&runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: id}}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetState().GetResult() != runnerv1.Result_RESULT_CANCELLED {
		t.Errorf("UpdateTask result = %v, want CANCELLED", res.Msg.GetState().GetResult())
	}
	// Logs are still accepted until archived.
	lres, err := c.UpdateLog(t.Context(), connect.NewRequest(&runnerv1.UpdateLogRequest{TaskId: id, Rows: logRows("post", "end"), NoMore: true}))
	if err != nil || lres.Msg.GetAckIndex() != 2 {
		t.Fatalf("UpdateLog after cancel: %v %v", lres, err)
	}
	// The runner's final result is a no-op, not flagged because the log is archived.
	if _, err := c.UpdateTask(t.Context(), connect.NewRequest(&runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: id, Result: runnerv1.Result_RESULT_CANCELLED}})); err != nil {
		t.Fatal(err)
	}
	if v := s.Task(id); v.Status != runnerv1.Result_RESULT_CANCELLED || v.ResultBeforeArchive || !v.Archived || v.ReportedResult != runnerv1.Result_RESULT_CANCELLED {
		t.Errorf("task = %+v", v)
	}
}

func TestZombie(t *testing.T) {
	s := New(Options{ZombieTimeout: 200 * time.Millisecond})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	dead := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	alive := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	waiting := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"nobody"}})
	fetch(t, c, 0)
	fetch(t, c, 0)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	stop := make(chan struct{})
	beat := make(chan error, 1)
	go func() {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				beat <- nil
				return
			case <-tk.C:
				if _, err := c.UpdateTask(ctx, connect.NewRequest(&runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: alive}})); err != nil {
					beat <- err
					return
				}
			}
		}
	}()
	v, err := s.WaitTask(ctx, dead, TaskView.Done)
	close(stop)
	if err := <-beat; err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != runnerv1.Result_RESULT_FAILURE || !v.Archived {
		t.Errorf("zombie = %+v", v)
	}
	if v := s.Task(alive); v.Done() {
		t.Errorf("heartbeating task died: %+v", v)
	}
	if v := s.Task(waiting); v.Done() {
		t.Errorf("waiting task died: %+v", v)
	}
	res, err := c.UpdateTask(ctx, connect.NewRequest(&runnerv1.UpdateTaskRequest{State: &runnerv1.TaskState{Id: dead}}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetState().GetResult() != runnerv1.Result_RESULT_FAILURE {
		t.Errorf("UpdateTask on zombie = %v", res.Msg.GetState())
	}
	_, err = c.UpdateLog(ctx, connect.NewRequest(&runnerv1.UpdateLogRequest{TaskId: dead, Rows: logRows("late")}))
	wantCode(t, err, connect.CodeAlreadyExists)
}

func TestWaitTask(t *testing.T) {
	s := New(Options{})
	if _, err := s.WaitTask(t.Context(), 1, TaskView.Done); err == nil {
		t.Error("WaitTask on a missing task: no error")
	}
	id := s.AddJob(JobSpec{Payload: twoStepPayload, RunsOn: []string{"self"}})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	v, err := s.WaitTask(ctx, id, TaskView.Done)
	if !errors.Is(err, context.DeadlineExceeded) || v.ID != id {
		t.Errorf("WaitTask = %+v, %v", v, err)
	}
	if v := s.Task(42); v.ID != 0 {
		t.Errorf("missing task view = %+v", v)
	}
}

func TestInjectError(t *testing.T) {
	s := New(Options{})
	base := s.Start(t)
	c, _ := registered(t, base, "self")
	s.InjectError("FetchTask", connect.NewError(connect.CodeUnavailable, errors.New("maintenance")), 2)
	for range 2 {
		_, err := c.FetchTask(t.Context(), connect.NewRequest(&runnerv1.FetchTaskRequest{}))
		wantCode(t, err, connect.CodeUnavailable)
	}
	fetch(t, c, 0)
}
