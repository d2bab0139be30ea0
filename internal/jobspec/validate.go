package jobspec

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	json "github.com/goccy/go-json"
)

// FieldError says which field of which message is wrong.
type FieldError struct {
	Message string // "JobRequest", "Event", "Cancel"
	Field   string // JSON path, e.g. "steps[2].shell"
	Problem string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("%s: field %s: %s", e.Message, e.Field, e.Problem)
}

var (
	uuidRe  = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	shaRe   = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)
	labelRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// IsUUID reports whether s is a UUID in its canonical text form.
func IsUUID(s string) bool { return uuidRe.MatchString(s) }

// Validate checks a JobRequest and returns all problems joined, each a
// *FieldError naming the field.
func (r *JobRequest) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{"JobRequest", field, fmt.Sprintf(format, args...)})
	}
	if r.Version != Version {
		bad("version", "is %d, this build understands %d", r.Version, Version)
	}
	if !IsUUID(r.JobID) {
		bad("job_id", "%q is not a UUID", r.JobID)
	}
	switch r.Source.Platform {
	case PlatformForgejo, PlatformGitHub, PlatformLocal:
	default:
		bad("source.platform", "%q is not one of forgejo, github, local", r.Source.Platform)
	}
	if r.Source.Instance == "" {
		bad("source.instance", "is empty; events could not be routed back")
	}
	if r.RepoURL == "" && r.Checkout.Bundle == "" && !r.Checkout.Skip {
		bad("repo_url", "is empty and no bundle is given")
	}
	if r.CommitSHA != "" && !shaRe.MatchString(r.CommitSHA) {
		bad("commit_sha", "%q is not 40 or 64 lowercase hex digits", r.CommitSHA)
	}
	if r.CommitSHA == "" && !r.Checkout.Skip {
		bad("commit_sha", "is empty")
	}
	if !labelRe.MatchString(r.RunsOn) {
		bad("runs_on", "%q is not a label (letters, digits, '.', '_', '-')", r.RunsOn)
	}
	switch r.Network {
	case "", NetworkEgress, NetworkNone:
	default:
		bad("network", "%q is not egress or none", r.Network)
	}
	if r.TimeoutMinutes < 0 {
		bad("timeout_minutes", "is negative")
	}
	for i, s := range r.Steps {
		p := fmt.Sprintf("steps[%d]", i)
		if s.Run == "" && s.Uses == "" {
			bad(p, "has neither run nor uses")
		}
		if s.Run != "" && s.Uses != "" {
			bad(p, "has both run and uses")
		}
		if s.Uses != "" && !s.IsCheckout() {
			bad(p+".uses", "%q is not supported (only actions/checkout)", s.Uses)
		}
		if s.TimeoutMinutes < 0 {
			bad(p+".timeout-minutes", "is negative")
		}
		if strings.ContainsRune(s.Shell, '\x00') {
			bad(p+".shell", "contains a NUL byte")
		}
	}
	if r.DebugSSH != nil && len(r.DebugSSH.AuthorizedKeys) == 0 {
		bad("debug_ssh.authorized_keys", "is empty; nobody could log in")
	}
	return errors.Join(errs...)
}

// Validate checks an Event.
func (e *Event) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{"Event", field, fmt.Sprintf(format, args...)})
	}
	if e.Version != Version {
		bad("version", "is %d, this build understands %d", e.Version, Version)
	}
	if !IsUUID(e.JobID) {
		bad("job_id", "%q is not a UUID", e.JobID)
	}
	if e.Seq < 1 {
		bad("seq", "is %d, sequence numbers start at 1", e.Seq)
	}
	switch e.Kind {
	case EventAccepted, EventVMBooting, EventStepStarted, EventLog, EventStepFinished, EventJobFinished, EventDebugSSH, EventError:
	default:
		bad("kind", "%q is not a known event kind", e.Kind)
	}
	if e.Step < SetupStep {
		bad("step", "is %d, below %d", e.Step, SetupStep)
	}
	if (e.Kind == EventStepFinished || e.Kind == EventJobFinished) && !validResult(e.Result) {
		bad("result", "%q is not a result", e.Result)
	}
	return errors.Join(errs...)
}

func validResult(r string) bool {
	switch r {
	case ResultSuccess, ResultFailure, ResultCancelled, ResultSkipped, ResultErrored:
		return true
	}
	return false
}

// Validate checks a Cancel.
func (c *Cancel) Validate() error {
	var errs []error
	if c.Version != Version {
		errs = append(errs, &FieldError{"Cancel", "version", fmt.Sprintf("is %d, this build understands %d", c.Version, Version)})
	}
	if !IsUUID(c.JobID) {
		errs = append(errs, &FieldError{"Cancel", "job_id", fmt.Sprintf("%q is not a UUID", c.JobID)})
	}
	return errors.Join(errs...)
}

// validator is any message of this package.
type validator interface{ Validate() error }

// decode is the decoder of every message. Unknown fields are ignored, so a
// newer producer can add optional fields; an incompatible change bumps
// Version, which Validate refuses.
func decode(name string, data []byte, v validator) error {
	// Unmarshal refuses trailing data after the object.
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decoding %s: %w", name, err)
	}
	return v.Validate()
}

// DecodeJobRequest parses and validates a JobRequest.
func DecodeJobRequest(data []byte) (*JobRequest, error) {
	var r JobRequest
	if err := decode("JobRequest", data, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// DecodeEvent parses and validates an Event.
func DecodeEvent(data []byte) (*Event, error) {
	var e Event
	if err := decode("Event", data, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// DecodeCancel parses and validates a Cancel.
func DecodeCancel(data []byte) (*Cancel, error) {
	var c Cancel
	if err := decode("Cancel", data, &c); err != nil {
		return nil, err
	}
	return &c, nil
}
