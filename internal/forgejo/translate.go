package forgejo

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/expr"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/workflow"
)

// ErrSkipped means the task's job-level if: is false: the job does not
// run, and the daemon reports it as skipped.
var ErrSkipped = errors.New("the job's if: is false")

// TaskInput is what TranslateTask needs to make a JobRequest of a task.
type TaskInput struct {
	Task *runnerv1.Task
	// Instance is the runner's UUID: JobRequest.Source.Instance, the
	// route of the job's events.
	Instance string
	// Labels are the label names this runner serves (catalog images):
	// RunsOn is the first runs-on label among them, and a job naming none
	// is refused. Empty means the first runs-on label but self-hosted.
	Labels []string
	// Sealer seals the task's secrets into the request.
	Sealer *jobspec.Sealer
	// ServerURL is the instance URL, used when the task's context has no
	// server_url.
	ServerURL string
}

// Secret names under which the server hands the runner the job token,
// in order of preference.
func tokenSecretNames() []string { return []string{"FORGEJO_TOKEN", "GITEA_TOKEN", "GITHUB_TOKEN"} }

// TranslateTask turns a Forgejo task into a JobRequest. The task's payload
// is a workflow with exactly one job whose matrix the server reduced to
// the one combination of this task; its needs come in Task.Needs. Errors
// name the task and, through package workflow, the job, the step and what
// is not supported (uses: other than actions/checkout, services:,
// container:). A job whose if: is false gives an error wrapping
// ErrSkipped.
func TranslateTask(in TaskInput) (jobspec.JobRequest, error) {
	if in.Task == nil {
		return jobspec.JobRequest{}, errors.New("translating task: no task")
	}
	id := in.Task.GetId()
	req, err := translateTask(in)
	if err != nil {
		return jobspec.JobRequest{}, fmt.Errorf("task %d: %w", id, err)
	}
	return req, nil
}

// translateTask does the work of TranslateTask; its errors do not name the
// task.
func translateTask(in TaskInput) (jobspec.JobRequest, error) {
	if in.Sealer == nil {
		return jobspec.JobRequest{}, errors.New("translating: no sealer")
	}
	task := in.Task
	taskCtx := task.GetContext().AsMap()
	file := ctxString(taskCtx["workflow"])
	if file == "" {
		file = "workflow payload"
	}
	w, err := workflow.Parse(file, task.GetWorkflowPayload())
	if err != nil {
		return jobspec.JobRequest{}, err
	}
	if len(w.Jobs) != 1 {
		ids := make([]string, len(w.Jobs))
		for i, j := range w.Jobs {
			ids[i] = j.ID
		}
		return jobspec.JobRequest{}, fmt.Errorf("%s: the payload holds %d jobs (%s), want exactly one", file, len(w.Jobs), strings.Join(ids, ", "))
	}
	job := w.Jobs[0]

	gh := githubContext(w, job, taskCtx, in.ServerURL)
	contexts := map[string]any{
		"github": gh,
		"vars":   ctxStrings(task.GetVars()),
		"needs":  needsContext(task.GetNeeds()),
		"inputs": inputsContext(gh),
	}
	legs, err := job.Matrix(&expr.Context{Values: contexts})
	if err != nil {
		return jobspec.JobRequest{}, err
	}
	if len(legs) != 1 {
		return jobspec.JobRequest{}, fmt.Errorf("%s: job %q: the payload's matrix has %d combinations, want one (the server expands the matrix)", file, job.ID, len(legs))
	}
	tr, err := workflow.Translate(workflow.Input{
		Workflow: w,
		Job:      job,
		Matrix:   legs[0],
		Total:    1,
		Contexts: contexts,
		KeepName: true,
		Labels:   in.Labels,
	})
	if err != nil {
		return jobspec.JobRequest{}, err
	}
	if tr.Skip {
		return jobspec.JobRequest{}, fmt.Errorf("job %q: %w", job.ID, ErrSkipped)
	}

	server, repository := ctxString(gh["server_url"]), ctxString(gh["repository"])
	switch {
	case repository == "":
		return jobspec.JobRequest{}, errors.New("the task's context names no repository")
	case server == "":
		return jobspec.JobRequest{}, errors.New("the task's context has no server_url and no instance URL was given")
	}

	jobID := uuid.NewString()
	secrets := taskSecrets(task, taskCtx)
	sealed, err := in.Sealer.Seal(jobID, secrets)
	if err != nil {
		return jobspec.JobRequest{}, fmt.Errorf("job %q: %w", job.ID, err)
	}
	return jobspec.JobRequest{
		Version: jobspec.Version,
		JobID:   jobID,
		Source: jobspec.Source{
			Platform: jobspec.PlatformForgejo,
			Instance: in.Instance,
			TaskID:   strconv.FormatInt(task.GetId(), 10),
		},
		Project:        repository,
		RepoURL:        server + "/" + repository + ".git",
		CommitSHA:      ctxString(gh["sha"]),
		Ref:            ctxString(gh["ref"]),
		RunsOn:         tr.RunsOn,
		Name:           tr.Name,
		Steps:          tr.Steps,
		Env:            tr.Env,
		Contexts:       tr.Contexts,
		Outputs:        tr.Outputs,
		Checkout:       tr.Checkout,
		Secrets:        sealed,
		TimeoutMinutes: tr.TimeoutMinutes,
		CreatedAt:      time.Now().UTC(),
	}, nil
}

// githubContext builds the github context from the task's context, in the
// shape workflow.GitHubContext gives: what the server sends non-empty wins,
// what it leaves empty (workspace, graphql_url, retention_days…) gets the
// workflow package's value. Token keys are kept; workflow.Translate drops
// them from the contexts the request carries.
func githubContext(w *workflow.Workflow, job *workflow.Job, task map[string]any, serverURL string) map[string]any {
	server := strings.TrimSuffix(ctxString(task["server_url"]), "/")
	if server == "" {
		server = strings.TrimSuffix(serverURL, "/")
	}
	gh := workflow.GitHubContext(w, job, workflow.LocalRun{
		Repository: ctxString(task["repository"]),
		SHA:        ctxString(task["sha"]),
		Ref:        ctxString(task["ref"]),
		ServerURL:  server,
		Actor:      ctxString(task["actor"]),
		EventName:  ctxString(task["event_name"]),
		RunID:      ctxString(task["run_id"]),
		RunNumber:  ctxString(task["run_number"]),
	})
	gh["api_url"] = server + "/api/v1" // Forgejo's and Gitea's REST API
	for k, v := range task {
		if !ctxEmpty(v) {
			gh[k] = v
		}
	}
	gh["server_url"] = strings.TrimSuffix(ctxString(gh["server_url"]), "/")
	return gh
}

// inputsContext is the inputs context: the inputs of a workflow_dispatch
// event, else empty.
func inputsContext(gh map[string]any) map[string]any {
	event, _ := gh["event"].(map[string]any)
	if in, ok := event["inputs"].(map[string]any); ok {
		return in
	}
	return map[string]any{}
}

// needsContext builds the needs context from the results the server sends
// of the jobs this one needs.
func needsContext(needs map[string]*runnerv1.TaskNeed) map[string]any {
	results := make(map[string]workflow.JobResult, len(needs))
	for id, n := range needs {
		results[id] = workflow.JobResult{Result: resultName(n.GetResult()), Outputs: n.GetOutputs()}
	}
	return workflow.NeedsContext(results)
}

// resultName turns a Result into its needs context value.
func resultName(r runnerv1.Result) string {
	switch r {
	case runnerv1.Result_RESULT_SUCCESS:
		return jobspec.ResultSuccess
	case runnerv1.Result_RESULT_FAILURE:
		return jobspec.ResultFailure
	case runnerv1.Result_RESULT_CANCELLED:
		return jobspec.ResultCancelled
	case runnerv1.Result_RESULT_SKIPPED:
		return jobspec.ResultSkipped
	}
	return strings.ToLower(strings.TrimPrefix(r.String(), "RESULT_"))
}

// taskSecrets gathers the secret part of a task: its secrets (with the job
// token under GITHUB_TOKEN, GITEA_TOKEN and FORGEJO_TOKEN), the token, and
// every value the agent must mask in logs.
func taskSecrets(task *runnerv1.Task, ctx map[string]any) jobspec.Secrets {
	secrets := maps.Clone(task.GetSecrets())
	if secrets == nil {
		secrets = map[string]string{}
	}
	token := ""
	for _, name := range tokenSecretNames() {
		if token = secrets[name]; token != "" {
			break
		}
	}
	if token == "" {
		token = ctxString(ctx["token"])
	}
	if token != "" {
		for _, name := range tokenSecretNames() {
			if secrets[name] == "" {
				secrets[name] = token
			}
		}
	}
	mask := []string{token, ctxString(ctx["token"]), ctxString(ctx["gitea_runtime_token"]), ctxString(ctx["forgejo_runtime_token"])}
	for _, v := range secrets {
		mask = append(mask, v)
	}
	mask = slices.DeleteFunc(mask, func(s string) bool { return strings.TrimSpace(s) == "" })
	slices.Sort(mask)
	return jobspec.Secrets{Secrets: secrets, Mask: slices.Compact(mask), Token: token}
}

// ctxStrings turns a map of strings into a context value.
func ctxStrings(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ctxString renders a context value from a protobuf Struct as a string: numbers
// (float64 there) without a fraction when they are whole.
func ctxString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return fmt.Sprint(v)
}

// ctxEmpty reports whether a context value from the server is one it left
// for the runner to fill: null, "", or an empty mapping or list.
func ctxEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}
