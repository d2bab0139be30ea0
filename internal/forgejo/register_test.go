package forgejo

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	"code.gitea.io/actions-proto-go/ping/v1/pingv1connect"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"github.com/google/uuid"
)

// rpcCall is one RPC the test server saw.
type rpcCall struct {
	procedure   string
	uuid, token string
	contentType string
}

// regServer is a minimal runner and ping service that records calls.
type regServer struct {
	runnerv1connect.UnimplementedRunnerServiceHandler
	pingv1connect.UnimplementedPingServiceHandler

	// declare, when set, answers Declare.
	declare func() error

	mu       sync.Mutex
	calls    []rpcCall
	register *runnerv1.RegisterRequest
}

func (s *regServer) record(procedure string, h http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, rpcCall{
		procedure:   procedure,
		uuid:        h.Get("x-runner-uuid"),
		token:       h.Get("x-runner-token"),
		contentType: h.Get("Content-Type"),
	})
}

func (s *regServer) Ping(_ context.Context, req *connect.Request[pingv1.PingRequest]) (*connect.Response[pingv1.PingResponse], error) {
	s.record(req.Spec().Procedure, req.Header())
	return connect.NewResponse(&pingv1.PingResponse{Data: "Hello, " + req.Msg.GetData() + "!"}), nil
}

func (s *regServer) Register(_ context.Context, req *connect.Request[runnerv1.RegisterRequest]) (*connect.Response[runnerv1.RegisterResponse], error) {
	s.record(req.Spec().Procedure, req.Header())
	s.mu.Lock()
	s.register = req.Msg
	s.mu.Unlock()
	if req.Msg.GetToken() != "reg-token" {
		return nil, connect.NewError(connect.CodeInvalidArgument, nil)
	}
	return connect.NewResponse(&runnerv1.RegisterResponse{Runner: &runnerv1.Runner{
		Id: 9, Uuid: testRunnerUUID, Token: "runner-token", Name: req.Msg.GetName(), Labels: req.Msg.GetLabels(),
	}}), nil
}

func (s *regServer) Declare(_ context.Context, req *connect.Request[runnerv1.DeclareRequest]) (*connect.Response[runnerv1.DeclareResponse], error) {
	s.record(req.Spec().Procedure, req.Header())
	if s.declare != nil {
		if err := s.declare(); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&runnerv1.DeclareResponse{Runner: &runnerv1.Runner{Uuid: testRunnerUUID}}), nil
}

func (s *regServer) seen() []rpcCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// start serves s on 127.0.0.1 under /api/actions, as Forgejo does, and
// returns the instance URL.
func (s *regServer) start(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	p, h := runnerv1connect.NewRunnerServiceHandler(s)
	mux.Handle("/api/actions"+p, http.StripPrefix("/api/actions", h))
	p, h = pingv1connect.NewPingServiceHandler(s)
	mux.Handle("/api/actions"+p, http.StripPrefix("/api/actions", h))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestRegister(t *testing.T) {
	t.Parallel()
	s := &regServer{}
	instance := s.start(t) + "/"
	creds, err := Register(t.Context(), RegisterOptions{
		Instance: instance,
		Token:    "reg-token",
		Name:     "runner-1",
		Labels:   []string{"linux-test", "omnios-r151056:host"},
		Version:  "solstice-test",
	})
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	want := Credentials{
		ID: 9, UUID: testRunnerUUID, Name: "runner-1", Token: "runner-token", Address: instance,
		Labels: []string{"linux-test", "omnios-r151056:host"},
	}
	if !credsEqual(creds, want) {
		t.Errorf("Register = %+v, want %+v", creds, want)
	}
	calls := s.seen()
	if len(calls) != 2 || calls[0].procedure != pingv1connect.PingServicePingProcedure || calls[1].procedure != runnerv1connect.RunnerServiceRegisterProcedure {
		t.Fatalf("calls = %+v, want Ping then Register", calls)
	}
	for _, c := range calls {
		if c.uuid != "" || c.token != "" {
			t.Errorf("%s carried runner credentials %q/%q", c.procedure, c.uuid, c.token)
		}
		if c.contentType != "application/proto" {
			t.Errorf("%s Content-Type = %q, want application/proto (Connect, binary)", c.procedure, c.contentType)
		}
	}
	if got, want := s.register.GetLabels(), []string{"linux-test", "omnios-r151056"}; !slices.Equal(got, want) {
		t.Errorf("Register sent labels %q, want the names %q", got, want)
	}
	if s.register.GetVersion() != "solstice-test" || s.register.GetName() != "runner-1" {
		t.Errorf("Register sent %v", s.register)
	}
}

func TestRegisterErrors(t *testing.T) {
	t.Parallel()
	s := &regServer{}
	instance := s.start(t)
	tests := []struct {
		name string
		opts RegisterOptions
		want string
	}{
		{"bad token", RegisterOptions{Instance: instance, Token: "wrong", Name: "r", Labels: []string{"linux-test"}}, "registering with " + instance},
		{"no server", RegisterOptions{Instance: "http://127.0.0.1:1", Token: "t", Name: "r", Labels: []string{"linux-test"}}, "pinging http://127.0.0.1:1"},
		{"docker label", RegisterOptions{Instance: instance, Token: "t", Name: "r", Labels: []string{"ubuntu:docker://node:22"}}, "docker"},
		{"no token", RegisterOptions{Instance: instance, Name: "r", Labels: []string{"linux-test"}}, "registration token"},
		{"no labels", RegisterOptions{Instance: instance, Token: "t", Name: "r"}, "labels"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Register(t.Context(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Register error = %v, want one holding %q", err, tt.want)
			}
		})
	}
}

func credsEqual(a, b Credentials) bool {
	return a.ID == b.ID && a.UUID == b.UUID && a.Name == b.Name && a.Token == b.Token &&
		a.Address == b.Address && slices.Equal(a.Labels, b.Labels)
}

func TestOfflineCredentials(t *testing.T) {
	t.Parallel()
	secret := "0123456789abcdef0123456789ABCDEF01234567"
	creds, err := OfflineCredentials("https://forge.example", secret, "vm-runner", []string{"linux-test:host"})
	if err != nil {
		t.Fatalf("OfflineCredentials: %v", err)
	}
	id, err := uuid.FromBytes([]byte(secret[:16]))
	if err != nil {
		t.Fatal(err)
	}
	want := Credentials{UUID: id.String(), Name: "vm-runner", Token: secret, Address: "https://forge.example", Labels: []string{"linux-test:host"}}
	if !credsEqual(creds, want) {
		t.Errorf("OfflineCredentials = %+v, want %+v", creds, want)
	}
	// The first 16 characters as raw ASCII bytes, not as hex digits.
	if got, want := creds.UUID, "30313233-3435-3637-3839-616263646566"; got != want {
		t.Errorf("UUID = %q, want %q", got, want)
	}

	for _, bad := range []string{
		"",
		secret[:39],
		secret + "8",
		"g123456789abcdef0123456789abcdef01234567",
		"0123456789abcdef0123456789abcdef0123456 ",
	} {
		if _, err := OfflineCredentials("https://forge.example", bad, "r", nil); err == nil {
			t.Errorf("OfflineCredentials accepted the secret %q", bad)
		}
	}
	if _, err := OfflineCredentials("https://forge.example", secret, "r", []string{"x:docker"}); err == nil {
		t.Error("OfflineCredentials accepted a docker label")
	}
}
