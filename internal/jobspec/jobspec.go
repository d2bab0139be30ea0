// Package jobspec holds the messages that travel between the platform
// daemons (solstice forgejo, solstice github, solstice exec) and the
// orchestrator: JobRequest, Event and Cancel. They are versioned JSON.
//
// The platform daemons and the orchestrator depend on this package, never on
// each other.
package jobspec

import (
	"time"

	json "github.com/goccy/go-json"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// Version is the current version of every message of this package.
const Version = 1

// Platforms a job can come from.
const (
	PlatformForgejo = "forgejo"
	PlatformGitHub  = "github"
	PlatformLocal   = "local" // solstice exec
)

// Network modes of a job's VM.
const (
	NetworkEgress = "egress" // outbound connections allowed, host loopback unreachable
	NetworkNone   = "none"   // nothing leaves the VM; only the SSH forward works
)

// JobRequest asks an orchestrator to run one job in a fresh VM. JobID is the
// idempotency key: publishing the same request twice runs it once.
type JobRequest struct {
	Version int    `json:"version"`
	JobID   string `json:"job_id"` // UUID
	Source  Source `json:"source"`

	Project   string `json:"project"` // owner/repo
	RepoURL   string `json:"repo_url"`
	CommitSHA string `json:"commit_sha"`
	Ref       string `json:"ref,omitempty"`

	RunsOn string `json:"runs_on"` // one label of the image catalog
	// Name is the job's display name (with its matrix values).
	Name string `json:"name,omitempty"`

	// Steps as the agent runs them; empty means the repository's
	// .solstice/workflow.kdl, else .solstice/job.sh.
	Steps []agentapi.Step `json:"steps,omitempty"`
	// Env is the job env (workflow env, then job env), values may hold
	// runtime expressions.
	Env map[string]string `json:"env,omitempty"`
	// Contexts are the expression contexts known when the job was made:
	// github, vars, matrix, strategy, needs, inputs.
	Contexts map[string]any `json:"contexts,omitempty"`
	// Outputs maps job output names to expressions the agent evaluates at
	// the end of the job.
	Outputs map[string]string `json:"outputs,omitempty"`

	Checkout agentapi.Checkout `json:"checkout,omitempty"`

	// Secrets is the sealed Secrets value (secrets, mask values, job token).
	// Nothing else in the request is secret.
	Secrets Sealed `json:"secrets,omitempty"`

	TimeoutMinutes float64 `json:"timeout_minutes,omitempty"`
	// Network is NetworkEgress (default when empty) or NetworkNone.
	Network string `json:"network,omitempty"`

	DebugSSH *DebugSSH `json:"debug_ssh,omitempty"`

	CreatedAt time.Time `json:"created_at,omitempty"`
}

// Source names where a job came from, so events find their way back.
type Source struct {
	Platform string `json:"platform"`
	// Instance identifies the runner daemon instance (its registration
	// UUID); events for the job are routed to it.
	Instance string `json:"instance"`
	// TaskID is the platform's id of the task or job.
	TaskID string `json:"task_id"`
	// Attempt distinguishes re-runs where the platform reuses a task id.
	Attempt int `json:"attempt,omitempty"`
}

// DebugSSH is the opt-in to keep a failed job's VM for interactive debugging.
type DebugSSH struct {
	// AuthorizedKeys are the triggering user's public keys.
	AuthorizedKeys []string `json:"authorized_keys"`
	User           string   `json:"user,omitempty"`
}

// Secrets is the plaintext inside JobRequest.Secrets.
type Secrets struct {
	Secrets map[string]string `json:"secrets,omitempty"`
	Mask    []string          `json:"mask,omitempty"`
	// Token is the platform's job token; the agent's checkout uses it.
	Token string `json:"token,omitempty"`
}

// Event kinds.
const (
	EventAccepted     = "accepted"
	EventVMBooting    = "vm_booting"
	EventStepStarted  = "step_started"
	EventLog          = "log"
	EventStepFinished = "step_finished"
	EventJobFinished  = "job_finished"
	EventDebugSSH     = "debug_ssh"
	EventError        = "error"
)

// Job results, as in agentapi, plus errored for jobs that could not run.
const (
	ResultSuccess   = agentapi.ResultSuccess
	ResultFailure   = agentapi.ResultFailure
	ResultCancelled = agentapi.ResultCancelled
	ResultSkipped   = agentapi.ResultSkipped
	ResultErrored   = "errored"
)

// SetupStep is the step index of events that belong to no step.
const SetupStep = agentapi.SetupStep

// Event reports progress of a job, from the orchestrator to the daemon that
// published it. Delivery is at least once: consumers de-duplicate by
// (JobID, Seq): Seq numbers of one job increase (from 1) in publish order
// and are never reused, though they may have gaps after a restart.
type Event struct {
	Version int       `json:"version"`
	JobID   string    `json:"job_id"`
	Seq     int64     `json:"seq"`
	Kind    string    `json:"kind"`
	Step    int       `json:"step"`
	Time    time.Time `json:"time"`

	// Lines is set for log events: a batch of lines in order.
	Lines []LogLine `json:"lines,omitempty"`
	// Name is the step's name (step_started).
	Name string `json:"name,omitempty"`
	// Result is set for step_finished and job_finished.
	Result   string            `json:"result,omitempty"`
	ExitCode int               `json:"exit_code,omitempty"`
	Outputs  map[string]string `json:"outputs,omitempty"`
	// Message explains an error, a cancel or a debug_ssh connection line.
	Message string `json:"message,omitempty"`
}

// LogLine is one line of job output.
type LogLine struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream,omitempty"` // stdout, stderr, system
	Text   string    `json:"text"`
}

// Cancel asks the orchestrator running a job to stop it and destroy its VM.
type Cancel struct {
	Version int    `json:"version"`
	JobID   string `json:"job_id"`
	Reason  string `json:"reason"`
}

// Marshal encodes a message as JSON.
func Marshal(v any) ([]byte, error) { return json.Marshal(v) }
