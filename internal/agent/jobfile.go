package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// maxJobFile bounds the job file the agent reads.
const maxJobFile = 16 << 20

var shaRE = regexp.MustCompile(`^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})$`)

// JobError is a job that cannot run: the job file or environment is
// missing, malformed or invalid. The agent exits with agentapi.ExitBadJob.
type JobError struct {
	Source string // the file, "standard input" or "environment"
	Field  string // the key at fault, if one is
	Msg    string
}

func (e *JobError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("bad job in %s: %s: %s", e.Source, e.Field, e.Msg)
	}
	return fmt.Sprintf("bad job in %s: %s", e.Source, e.Msg)
}

// LoadJob reads the job: from the file named by SOLSTICE_JOB_FILE ("-" is
// standard input), else from /etc/solstice/job.yaml when it exists, else
// from SOLSTICE_REPO_URL and SOLSTICE_COMMIT_SHA. fileExists lets tests
// avoid the real default path.
func LoadJob(getenv func(string) string, stdin io.Reader, defaultFile string) (agentapi.JobFile, error) {
	path := getenv(agentapi.EnvJobFile)
	switch {
	case path == agentapi.StdinJobFileArg:
		data, err := io.ReadAll(io.LimitReader(stdin, maxJobFile+1))
		if err != nil {
			return agentapi.JobFile{}, &JobError{Source: "standard input", Msg: err.Error()}
		}
		return ParseJob("standard input", data)
	case path != "":
		return readJobFile(path)
	}
	if defaultFile != "" {
		if _, err := os.Stat(defaultFile); err == nil {
			return readJobFile(defaultFile)
		}
	}
	job := agentapi.JobFile{RepoURL: getenv(agentapi.EnvRepoURL), CommitSHA: getenv(agentapi.EnvCommitSHA)}
	if job.RepoURL == "" && job.CommitSHA == "" {
		return job, &JobError{Source: "environment", Msg: fmt.Sprintf("no job: set %s to a job file, or %s and %s (and %s does not exist)",
			agentapi.EnvJobFile, agentapi.EnvRepoURL, agentapi.EnvCommitSHA, defaultFile)}
	}
	if err := validateJob("environment", &job); err != nil {
		return job, err
	}
	return job, nil
}

func readJobFile(path string) (agentapi.JobFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return agentapi.JobFile{}, &JobError{Source: path, Msg: "cannot read the job file: " + errors.Unwrap(err).Error()}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJobFile+1))
	if err != nil {
		return agentapi.JobFile{}, &JobError{Source: path, Msg: "cannot read the job file: " + err.Error()}
	}
	return ParseJob(path, data)
}

// ParseJob parses and validates a job file. Unknown keys are errors, so a
// misspelt key does not silently do nothing.
func ParseJob(source string, data []byte) (agentapi.JobFile, error) {
	var job agentapi.JobFile
	if len(data) > maxJobFile {
		return job, &JobError{Source: source, Msg: fmt.Sprintf("larger than %d bytes", maxJobFile)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return job, &JobError{Source: source, Msg: "the job file is empty"}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&job); err != nil {
		return job, &JobError{Source: source, Msg: "malformed YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	if err := validateJob(source, &job); err != nil {
		return job, err
	}
	return job, nil
}

func validateJob(source string, job *agentapi.JobFile) error {
	bad := func(field, format string, args ...any) error {
		return &JobError{Source: source, Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if job.Version > agentapi.JobFileVersion {
		return bad("version", "%d is newer than this agent understands (%d); update the orchestrator's agent", job.Version, agentapi.JobFileVersion)
	}
	needsRepo := !job.Checkout.Skip || len(job.Steps) == 0
	for _, s := range job.Steps {
		if s.IsCheckout() {
			needsRepo = true
		}
	}
	if needsRepo {
		if job.RepoURL == "" && job.Checkout.Bundle == "" {
			return bad("repo_url", "missing (the job fetches a repository)")
		}
		if job.CommitSHA == "" {
			return bad("commit_sha", "missing (the job fetches a repository)")
		}
	}
	if job.CommitSHA != "" && !shaRE.MatchString(job.CommitSHA) {
		return bad("commit_sha", "%q is not a commit SHA (40 or 64 hex digits)", job.CommitSHA)
	}
	if strings.HasPrefix(job.RepoURL, "-") {
		return bad("repo_url", "%q is not a URL", job.RepoURL)
	}
	if d := job.Checkout.FetchDepth; d != nil && *d < 0 {
		return bad("checkout.fetch_depth", "must be 0 (full history) or more, not %d", *d)
	}
	switch job.Checkout.Submodules {
	case "", "false", "true", "recursive":
	default:
		return bad("checkout.submodules", "must be true, false or recursive, not %q", job.Checkout.Submodules)
	}
	if job.TimeoutMinutes < 0 {
		return bad("timeout_minutes", "must not be negative")
	}
	for i, s := range job.Steps {
		field := fmt.Sprintf("steps[%d]", i)
		switch {
		case s.Uses != "" && !s.IsCheckout():
			return bad(field+".uses", "%q: the agent runs only run: steps and actions/checkout", s.Uses)
		case s.Uses == "" && strings.TrimSpace(s.Run) == "":
			return bad(field+".run", "missing: a step needs a run: script")
		case s.Uses != "" && s.Run != "":
			return bad(field, "has both uses: and run:")
		case s.TimeoutMinutes < 0:
			return bad(field+".timeout_minutes", "must not be negative")
		}
	}
	return nil
}
