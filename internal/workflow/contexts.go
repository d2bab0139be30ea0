package workflow

import (
	"strings"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// LocalRun describes a run of a workflow from a local repository (solstice
// exec), for the github context.
type LocalRun struct {
	// Repository is owner/repo.
	Repository string
	// SHA is the commit; Ref is refs/heads/<branch> or refs/tags/<tag>
	// (empty for a detached HEAD).
	SHA string
	Ref string
	// ServerURL defaults to https://github.com.
	ServerURL string
	// Workspace is the job's workspace in the guest; default
	// agentapi.DefaultWorkdir.
	Workspace string
	// Actor defaults to "solstice".
	Actor string
	// EventName defaults to "push".
	EventName string
	// RunID and RunNumber default to "1".
	RunID     string
	RunNumber string
}

// GitHubContext builds the github context of job for a local run: what a
// push of the commit would give, as far as it can be known locally.
func GitHubContext(w *Workflow, job *Job, r LocalRun) map[string]any {
	def := func(s, d string) string {
		if s == "" {
			return d
		}
		return s
	}
	server := strings.TrimSuffix(def(r.ServerURL, "https://github.com"), "/")
	api, graphql := server+"/api/v3", server+"/api/graphql"
	if server == "https://github.com" {
		api, graphql = "https://api.github.com", "https://api.github.com/graphql"
	}
	actor := def(r.Actor, "solstice")
	owner, name, _ := strings.Cut(r.Repository, "/")
	refName, refType := "", ""
	switch {
	case strings.HasPrefix(r.Ref, "refs/heads/"):
		refName, refType = strings.TrimPrefix(r.Ref, "refs/heads/"), "branch"
	case strings.HasPrefix(r.Ref, "refs/tags/"):
		refName, refType = strings.TrimPrefix(r.Ref, "refs/tags/"), "tag"
	case r.Ref != "":
		refName = r.Ref
	}
	workflowName := w.Name
	if workflowName == "" {
		workflowName = w.File
	}
	jobID := ""
	if job != nil {
		jobID = job.ID
	}
	repoURL := server + "/" + r.Repository
	event := map[string]any{
		"ref":    r.Ref,
		"before": strings.Repeat("0", len(r.SHA)),
		"after":  r.SHA,
		"repository": map[string]any{
			"full_name": r.Repository,
			"name":      name,
			"owner":     map[string]any{"login": owner, "name": owner},
			"html_url":  repoURL,
		},
		"head_commit": map[string]any{"id": r.SHA},
		"pusher":      map[string]any{"name": actor},
		"sender":      map[string]any{"login": actor},
	}
	return map[string]any{
		"action":              "",
		"action_path":         "",
		"actor":               actor,
		"api_url":             api,
		"base_ref":            "",
		"event":               event,
		"event_name":          def(r.EventName, "push"),
		"graphql_url":         graphql,
		"head_ref":            "",
		"job":                 jobID,
		"ref":                 r.Ref,
		"ref_name":            refName,
		"ref_protected":       false,
		"ref_type":            refType,
		"repository":          r.Repository,
		"repository_owner":    owner,
		"repositoryUrl":       repoURL + ".git",
		"retention_days":      "90",
		"run_attempt":         "1",
		"run_id":              def(r.RunID, "1"),
		"run_number":          def(r.RunNumber, "1"),
		"secret_source":       "None",
		"server_url":          server,
		"sha":                 r.SHA,
		"triggering_actor":    actor,
		"workflow":            workflowName,
		"workspace":           def(r.Workspace, agentapi.DefaultWorkdir),
		"repository_id":       "",
		"repository_owner_id": "",
	}
}

// JobResult is the outcome of a finished job, for the needs context of the
// jobs that need it.
type JobResult struct {
	// Result is success, failure, cancelled or skipped.
	Result  string
	Outputs map[string]string
}

// NeedsContext builds the needs context from the results of the jobs a job
// needs: needs.<id>.result and needs.<id>.outputs.<name>.
func NeedsContext(results map[string]JobResult) map[string]any {
	out := make(map[string]any, len(results))
	for id, r := range results {
		outputs := make(map[string]any, len(r.Outputs))
		for k, v := range r.Outputs {
			outputs[k] = v
		}
		out[id] = map[string]any{"result": strings.ToLower(r.Result), "outputs": outputs}
	}
	return out
}
