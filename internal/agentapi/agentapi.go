// Package agentapi is the contract between the host and the guest agent
// (solstice-runner): the job file the agent reads, the JSON event lines it
// writes, and its own exit codes.
//
// It is a leaf package: it imports only the standard library, so the guest
// agent can use it without pulling in anything of the host side, and the
// orchestrator can use it to write job files and read events.
package agentapi

import "time"

// JobFileVersion is the version of the job file format this package describes.
const JobFileVersion = 1

// Default locations and environment variables of the agent.
const (
	DefaultJobFile  = "/etc/solstice/job.yaml"
	DefaultWorkdir  = "/root/work"
	EnvJobFile      = "SOLSTICE_JOB_FILE"
	EnvWorkdir      = "SOLSTICE_WORKDIR"
	EnvRepoURL      = "SOLSTICE_REPO_URL"
	EnvCommitSHA    = "SOLSTICE_COMMIT_SHA"
	StdinJobFileArg = "-" // SOLSTICE_JOB_FILE=- reads the job file from standard input
)

// Exit codes of the agent itself. A failing step makes the agent exit with
// that step's own exit code instead; these are chosen above the range shells
// normally use (1–2, 126–128+n are used by shells, 124 by timeout(1)).
const (
	ExitSuccess      = 0
	ExitBadJob       = 80  // job file or environment missing, malformed or invalid
	ExitFetchFailed  = 81  // the repository could not be fetched at the commit
	ExitNothingToRun = 82  // no steps, no .solstice/workflow.kdl and no .solstice/job.sh
	ExitInternal     = 83  // the agent itself failed (cannot write events, workspace…)
	ExitCancelled    = 84  // the agent was interrupted (SIGTERM/SIGINT) before the job ended
	ExitStepTimeout  = 124 // a step ran past its timeout-minutes (matches timeout(1))
)

// JobFile is the job the agent runs. It is YAML on disk (or on standard
// input); keys are snake_case. Only RepoURL and CommitSHA are required, and
// only when the job fetches a repository.
type JobFile struct {
	Version   int    `yaml:"version,omitempty" json:"version,omitempty"`
	JobID     string `yaml:"job_id,omitempty" json:"job_id,omitempty"`
	RepoURL   string `yaml:"repo_url" json:"repo_url"`
	CommitSHA string `yaml:"commit_sha" json:"commit_sha"`
	Ref       string `yaml:"ref,omitempty" json:"ref,omitempty"`

	// Checkout holds the options of the agent's own checkout.
	Checkout Checkout `yaml:"checkout,omitempty" json:"checkout,omitempty"`

	// Env is the job-level environment; step env is applied on top of it.
	Env map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
	// Secrets are available to expressions as secrets.NAME and are masked.
	Secrets map[string]string `yaml:"secrets,omitempty" json:"secrets,omitempty"`
	// Mask lists further values to mask in all output.
	Mask []string `yaml:"mask,omitempty" json:"mask,omitempty"`

	// Steps run in order. Empty means: .solstice/workflow.kdl of the
	// repository, else .solstice/job.sh.
	Steps []Step `yaml:"steps,omitempty" json:"steps,omitempty"`

	// Contexts holds the expression contexts known on the host when the job
	// was made (github, vars, matrix, strategy, needs, inputs). The agent
	// adds env, secrets, steps, job and runner itself.
	Contexts map[string]any `yaml:"contexts,omitempty" json:"contexts,omitempty"`

	// Outputs maps job output names to expressions evaluated after the last
	// step (usually over steps.<id>.outputs).
	Outputs map[string]string `yaml:"outputs,omitempty" json:"outputs,omitempty"`

	// TimeoutMinutes bounds the whole job; 0 means no limit of the agent's own.
	TimeoutMinutes float64 `yaml:"timeout_minutes,omitempty" json:"timeout_minutes,omitempty"`
}

// Checkout are the options of the agent's checkout (what actions/checkout's
// inputs map to).
type Checkout struct {
	// Skip disables the fetch at job start when no step is a checkout step.
	// Workflow jobs without actions/checkout set it, as GitHub leaves their
	// workspace empty.
	Skip bool `yaml:"skip,omitempty" json:"skip,omitempty"`
	// FetchDepth is the history depth; 0 means full history, default 1.
	FetchDepth *int `yaml:"fetch_depth,omitempty" json:"fetch_depth,omitempty"`
	// Token authenticates HTTP(S) fetches; it goes to git through its
	// environment, never on a command line. It is masked.
	Token string `yaml:"token,omitempty" json:"token,omitempty"`
	// Submodules: "", "true" or "recursive".
	Submodules string `yaml:"submodules,omitempty" json:"submodules,omitempty"`
	// Bundle is a path (inside the guest) of a git bundle to fetch from
	// instead of RepoURL; solstice exec ships the local repository this way.
	Bundle string `yaml:"bundle,omitempty" json:"bundle,omitempty"`
}

// Step is one step of a job. The same type is carried in the JobRequest, so
// its JSON names follow the workflow syntax.
//
// Name, Run, Env values and WorkingDirectory may contain ${{ }} expressions;
// If is an expression (with or without ${{ }}), empty meaning success().
// The agent evaluates them just before the step runs.
type Step struct {
	ID               string            `yaml:"id,omitempty" json:"id,omitempty"`
	Name             string            `yaml:"name,omitempty" json:"name,omitempty"`
	If               string            `yaml:"if,omitempty" json:"if,omitempty"`
	Run              string            `yaml:"run,omitempty" json:"run,omitempty"`
	Shell            string            `yaml:"shell,omitempty" json:"shell,omitempty"`
	Env              map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
	WorkingDirectory string            `yaml:"working_directory,omitempty" json:"working-directory,omitempty"`
	TimeoutMinutes   float64           `yaml:"timeout_minutes,omitempty" json:"timeout-minutes,omitempty"`
	ContinueOnError  bool              `yaml:"continue_on_error,omitempty" json:"continue-on-error,omitempty"`
	// Uses is set only for the steps the agent implements itself:
	// "actions/checkout@<ref>" (the agent's own checkout). With holds its inputs.
	Uses string            `yaml:"uses,omitempty" json:"uses,omitempty"`
	With map[string]string `yaml:"with,omitempty" json:"with,omitempty"`
}

// IsCheckout reports whether the step is the agent's own checkout.
func (s Step) IsCheckout() bool {
	return len(s.Uses) >= len("actions/checkout") && s.Uses[:len("actions/checkout")] == "actions/checkout"
}

// Event kinds written by the agent, one JSON object per line.
const (
	KindJobStarted   = "job_started"
	KindStepStarted  = "step_started"
	KindLog          = "log"
	KindAnnotation   = "annotation"
	KindStepFinished = "step_finished"
	KindJobFinished  = "job_finished"
)

// Results of steps and jobs.
const (
	ResultSuccess   = "success"
	ResultFailure   = "failure"
	ResultCancelled = "cancelled"
	ResultSkipped   = "skipped"
)

// SetupStep is the step index of lines that belong to no step: the agent's
// own setup (fetch, reading the workflow) and teardown.
const SetupStep = -1

// Event is one JSON line of the agent's event stream. Fields are set by kind:
//
//	job_started:   Time, Steps (names, for fallback workflows)
//	step_started:  Step, Name, Time
//	log:           Step, Stream ("stdout", "stderr" or "system"), Line, Time
//	annotation:    Step, Level ("error", "warning", "notice"), Message, File, Line…
//	step_finished: Step, Result, Outcome, ExitCode, Outputs, Time
//	job_finished:  Result, ExitCode, Outputs, Time
type Event struct {
	Seq      int64             `json:"seq"`
	Kind     string            `json:"kind"`
	Time     time.Time         `json:"time"`
	Step     int               `json:"step"`
	Name     string            `json:"name,omitempty"`
	Stream   string            `json:"stream,omitempty"`
	Line     string            `json:"line,omitempty"`
	Level    string            `json:"level,omitempty"`
	Message  string            `json:"message,omitempty"`
	File     string            `json:"file,omitempty"`
	LineNo   int               `json:"line_no,omitempty"`
	Title    string            `json:"title,omitempty"`
	Result   string            `json:"result,omitempty"`
	Outcome  string            `json:"outcome,omitempty"`
	ExitCode int               `json:"exit_code"`
	Outputs  map[string]string `json:"outputs,omitempty"`
	Steps    []string          `json:"steps,omitempty"`
}
