package jobspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

func validRequest() JobRequest {
	return JobRequest{
		Version:   Version,
		JobID:     "0b7d1c9e-2f4a-4d5b-9c3e-1a2b3c4d5e6f",
		Source:    Source{Platform: PlatformForgejo, Instance: "runner-1", TaskID: "42"},
		Project:   "owner/repo",
		RepoURL:   "https://forge.example/owner/repo.git",
		CommitSHA: strings.Repeat("a", 40),
		RunsOn:    "omnios-r151056",
		Steps: []agentapi.Step{
			{Uses: "actions/checkout@v4"},
			{Name: "build", Run: "make"},
		},
	}
}

func TestJobRequestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*JobRequest)
		fields []string // fields the error must name; none means valid
	}{
		{"valid", func(*JobRequest) {}, nil},
		{"sha256 commit", func(r *JobRequest) { r.CommitSHA = strings.Repeat("b", 64) }, nil},
		{"bad version", func(r *JobRequest) { r.Version = 2 }, []string{"version"}},
		{"bad uuid", func(r *JobRequest) { r.JobID = "42" }, []string{"job_id"}},
		{"bad platform", func(r *JobRequest) { r.Source.Platform = "gitlab" }, []string{"source.platform"}},
		{"no instance", func(r *JobRequest) { r.Source.Instance = "" }, []string{"source.instance"}},
		{"short sha", func(r *JobRequest) { r.CommitSHA = "abc123" }, []string{"commit_sha"}},
		{"bad label", func(r *JobRequest) { r.RunsOn = "bad label" }, []string{"runs_on"}},
		{"bad network", func(r *JobRequest) { r.Network = "bridge" }, []string{"network"}},
		{"foreign action", func(r *JobRequest) { r.Steps[1] = agentapi.Step{Uses: "actions/setup-go@v5"} }, []string{"steps[1].uses"}},
		{"empty step", func(r *JobRequest) { r.Steps[1] = agentapi.Step{Name: "x"} }, []string{"steps[1]"}},
		{"several problems", func(r *JobRequest) { r.JobID = ""; r.RunsOn = "" }, []string{"job_id", "runs_on"}},
		{"no repo", func(r *JobRequest) { r.RepoURL = "" }, []string{"repo_url"}},
		{"bundle instead of repo", func(r *JobRequest) { r.RepoURL = ""; r.Checkout.Bundle = "/tmp/x.bundle" }, nil},
		{"debug ssh without keys", func(r *JobRequest) { r.DebugSSH = &DebugSSH{} }, []string{"debug_ssh.authorized_keys"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest()
			tt.modify(&r)
			err := r.Validate()
			if len(tt.fields) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors naming %v", tt.fields)
			}
			for _, f := range tt.fields {
				if !strings.Contains(err.Error(), "field "+f+":") {
					t.Errorf("Validate() = %q, does not name field %s", err, f)
				}
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("error %v holds no *FieldError", err)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	r := validRequest()
	data, err := Marshal(&r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeJobRequest(data)
	if err != nil {
		t.Fatalf("DecodeJobRequest: %v", err)
	}
	again, _ := Marshal(got)
	if !bytes.Equal(data, again) {
		t.Errorf("round trip changed the message:\n%s\n%s", data, again)
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"not json", `{"version":`, "decoding JobRequest"},
		{"trailing", `{"version":1} {}`, "after top-level value"},
		{"wrong type", `{"version":"one"}`, "decoding JobRequest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeJobRequest([]byte(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("DecodeJobRequest(%q) = %v, want error containing %q", tt.input, err, tt.want)
			}
		})
	}
}

func TestEventAndCancelValidate(t *testing.T) {
	id := "0b7d1c9e-2f4a-4d5b-9c3e-1a2b3c4d5e6f"
	good := Event{Version: 1, JobID: id, Seq: 1, Kind: EventJobFinished, Step: SetupStep, Result: ResultErrored}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid event: %v", err)
	}
	bad := Event{Version: 1, JobID: id, Seq: 0, Kind: "started", Step: -2}
	err := bad.Validate()
	for _, f := range []string{"seq", "kind", "step"} {
		if err == nil || !strings.Contains(err.Error(), "field "+f+":") {
			t.Errorf("Validate() = %v, want it to name %s", err, f)
		}
	}
	noResult := Event{Version: 1, JobID: id, Seq: 3, Kind: EventStepFinished}
	if err := noResult.Validate(); err == nil || !strings.Contains(err.Error(), "field result:") {
		t.Errorf("step_finished without result: %v", err)
	}
	if err := (&Cancel{Version: 1, JobID: id, Reason: "user"}).Validate(); err != nil {
		t.Errorf("valid cancel: %v", err)
	}
	if err := (&Cancel{Version: 1, JobID: "x"}).Validate(); err == nil {
		t.Error("cancel with bad job id: no error")
	}
}

func TestSealer(t *testing.T) {
	key := NewKey()
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	in := Secrets{Secrets: map[string]string{"TOKEN": "hunter2"}, Mask: []string{"m"}, Token: "t"}
	sealed, err := s.Seal("job-a", in)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("hunter2")) {
		t.Fatal("sealed value contains the plaintext")
	}
	var out Secrets
	if err := s.Open("job-a", sealed, &out); err != nil {
		t.Fatalf("Open: %v", err)
	}
	if out.Secrets["TOKEN"] != "hunter2" || out.Token != "t" || len(out.Mask) != 1 {
		t.Errorf("Open = %+v, want %+v", out, in)
	}
	if err := s.Open("job-b", sealed, &out); !errors.Is(err, ErrOpen) {
		t.Errorf("Open for another job = %v, want ErrOpen", err)
	}
	other, _ := NewSealer(NewKey())
	if err := other.Open("job-a", sealed, &out); !errors.Is(err, ErrOpen) {
		t.Errorf("Open with another key = %v, want ErrOpen", err)
	}
	tampered := append(Sealed(nil), sealed...)
	tampered[len(tampered)-1] ^= 1
	if err := s.Open("job-a", tampered, &out); !errors.Is(err, ErrOpen) {
		t.Errorf("Open of tampered value = %v, want ErrOpen", err)
	}
	// Sealed values travel as base64 inside the JSON of a JobRequest.
	r := validRequest()
	r.Secrets = sealed
	data, _ := json.Marshal(&r)
	if bytes.Contains(data, []byte("hunter2")) {
		t.Fatal("JobRequest JSON contains the secret")
	}
	back, err := DecodeJobRequest(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Open(back.JobID, back.Secrets, &out); err == nil {
		t.Fatal("opening with the request's job id should fail: sealed for job-a")
	}
}

func TestParseKey(t *testing.T) {
	key := bytes.Repeat([]byte{7}, KeySize)
	for _, enc := range []string{
		"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
		"0707070707070707070707070707070707070707070707070707070707070707",
	} {
		got, err := ParseKey(enc)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("ParseKey(%q) = %x, %v", enc, got, err)
		}
	}
	if _, err := ParseKey("short"); err == nil {
		t.Error("ParseKey(short) = nil error")
	}
	if _, err := NewSealer([]byte("short")); err == nil {
		t.Error("NewSealer(short key) = nil error")
	}
}

func FuzzDecode(f *testing.F) {
	r := validRequest()
	data, _ := Marshal(&r)
	f.Add(data)
	f.Add([]byte(`{"version":1,"job_id":"0b7d1c9e-2f4a-4d5b-9c3e-1a2b3c4d5e6f","seq":1,"kind":"log","step":-1}`))
	f.Add([]byte(`{"version":1,"job_id":"x","reason":"r"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if r, err := DecodeJobRequest(data); err == nil && r.Validate() != nil {
			t.Fatal("decoded request does not validate")
		}
		_, _ = DecodeEvent(data)
		_, _ = DecodeCancel(data)
	})
}
