package forgejo

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
)

func TestClientHeaders(t *testing.T) {
	t.Parallel()
	s := &regServer{}
	instance := s.start(t)
	creds := &Credentials{UUID: testRunnerUUID, Token: "runner-token"}
	runner, ping := NewClient(instance, creds, nil)
	ctx := t.Context()
	if _, err := ping.Ping(ctx, connect.NewRequest(&pingv1.PingRequest{Data: "x"})); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if _, err := runner.Register(ctx, connect.NewRequest(&runnerv1.RegisterRequest{Name: "r", Token: "reg-token"})); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if _, err := runner.Declare(ctx, connect.NewRequest(&runnerv1.DeclareRequest{Version: "v", Labels: []string{"linux-test"}})); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	_, err := runner.FetchTask(ctx, connect.NewRequest(&runnerv1.FetchTaskRequest{}))
	if !IsUnimplemented(err) {
		t.Errorf("FetchTask error %v: IsUnimplemented = false", err)
	}
	for _, c := range s.seen() {
		authed := c.uuid == testRunnerUUID && c.token == "runner-token"
		bare := c.uuid == "" && c.token == ""
		switch {
		case c.procedure == runnerv1connect.RunnerServiceRegisterProcedure && !bare:
			t.Errorf("Register carried runner credentials %q/%q", c.uuid, c.token)
		case c.procedure != runnerv1connect.RunnerServiceRegisterProcedure && !authed:
			t.Errorf("%s carried %q/%q, want the runner's uuid and token", c.procedure, c.uuid, c.token)
		}
	}
}

func TestIsUnauthenticated(t *testing.T) {
	t.Parallel()
	forgejo := &regServer{declare: func() error {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("unregistered runner"))
	}}
	unimplemented := &regServer{declare: func() error {
		return connect.NewError(connect.CodeUnimplemented, errors.New("no Declare"))
	}}
	// Gitea sends gRPC status errors, which connect turns into HTTP 500
	// with code unknown.
	gitea := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"code":"unknown","message":"rpc error: code = Unauthenticated desc = unregistered runner"}`)
	}))
	t.Cleanup(gitea.Close)
	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)

	tests := []struct {
		name                  string
		instance              string
		unauth, unimplemented bool
	}{
		{"forgejo", forgejo.start(t), true, false},
		{"gitea", gitea.URL, true, false},
		{"old server", unimplemented.start(t), false, true},
		{"no actions route", notFound.URL, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runner, _ := NewClient(tt.instance, &Credentials{UUID: testRunnerUUID, Token: "t"}, nil)
			_, err := runner.Declare(t.Context(), connect.NewRequest(&runnerv1.DeclareRequest{}))
			if err == nil {
				t.Fatal("Declare succeeded")
			}
			if got := IsUnauthenticated(err); got != tt.unauth {
				t.Errorf("IsUnauthenticated(%v) = %v, want %v", err, got, tt.unauth)
			}
			if got := IsUnimplemented(err); got != tt.unimplemented {
				t.Errorf("IsUnimplemented(%v) = %v, want %v", err, got, tt.unimplemented)
			}
			wrapped := fmt.Errorf("declaring: %w", err)
			if IsUnauthenticated(wrapped) != tt.unauth || IsUnimplemented(wrapped) != tt.unimplemented {
				t.Errorf("wrapping %v changes the answers", err)
			}
		})
	}
	if IsUnauthenticated(nil) || IsUnimplemented(nil) {
		t.Error("nil is an error")
	}
}

func TestCredentialsFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), ".runner")
	// An existing file with looser permissions is replaced.
	if err := os.WriteFile(path, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := Credentials{
		ID: 3, UUID: testRunnerUUID, Name: "vm-runner", Token: "runner-token",
		Address: "https://forge.example", Labels: []string{"linux-test:host", "omnios-r151056:host"},
	}
	if err := SaveCredentials(path, want); err != nil {
		t.Fatalf("SaveCredentials: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	got, err := LoadCredentials(path)
	if err != nil {
		t.Fatalf("LoadCredentials: %v", err)
	}
	if !credsEqual(got, want) {
		t.Errorf("LoadCredentials = %+v, want %+v", got, want)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("the directory holds %d files, want only .runner", len(entries))
	}
}

func TestLoadCredentialsErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"broken":   "{",
		"no-uuid":  `{"token":"t"}`,
		"no-token": `{"uuid":"u"}`,
	} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCredentials(path); err == nil {
			t.Errorf("LoadCredentials(%s) succeeded", name)
		}
	}
	if _, err := LoadCredentials(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadCredentials(missing) = %v, want fs.ErrNotExist", err)
	}
	if err := SaveCredentials(filepath.Join(dir, "no", "such", "dir"), Credentials{}); err == nil {
		t.Error("SaveCredentials into a missing directory succeeded")
	}
}
