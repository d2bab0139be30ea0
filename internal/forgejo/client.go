// Package forgejo is the Forgejo Actions runner daemon, `solstice forgejo`:
// it registers with a Forgejo (or Gitea) instance, fetches tasks, turns
// each into a jobspec.JobRequest for an orchestrator, and reports the
// job's progress, logs and result back to the server.
//
// The wire protocol is connect-go over HTTP (package
// code.gitea.io/actions-proto-go), rooted at <instance>/api/actions.
package forgejo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"code.gitea.io/actions-proto-go/ping/v1/pingv1connect"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
)

// Headers that authenticate a registered runner on every RunnerService
// call but Register.
const (
	headerRunnerUUID  = "x-runner-uuid"
	headerRunnerToken = "x-runner-token"
)

// Credentials identify a registered runner. They are what the `.runner`
// file holds, as JSON, in the same shape as the Forgejo runner's.
type Credentials struct {
	ID    int64  `json:"id"`
	UUID  string `json:"uuid"`
	Name  string `json:"name"`
	Token string `json:"token"`
	// Address is the instance URL the runner registered with.
	Address string `json:"address"`
	// Labels are the runner's labels, name:scheme (see ParseLabel).
	Labels []string `json:"labels"`
}

// SaveCredentials writes c to path as JSON, readable by the owner only
// (mode 0600). The write is atomic: a temporary file in the same
// directory is renamed over path.
func SaveCredentials(path string, c Credentials) (err error) {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding runner credentials: %w", err)
	}
	data = append(data, '\n')
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("saving runner credentials to %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("saving runner credentials to %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("saving runner credentials to %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("saving runner credentials to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("saving runner credentials to %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("saving runner credentials to %s: %w", path, err)
	}
	return nil
}

// LoadCredentials reads a credentials file written by SaveCredentials (or
// by the Forgejo runner). A file without a UUID or a token is an error.
func LoadCredentials(path string) (Credentials, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Credentials{}, fmt.Errorf("loading runner credentials: %w (register the runner first: solstice forgejo register)", err)
	}
	if err != nil {
		return Credentials{}, fmt.Errorf("loading runner credentials: %w", err)
	}
	var c Credentials
	if err := json.Unmarshal(data, &c); err != nil {
		return Credentials{}, fmt.Errorf("loading runner credentials from %s: %w", path, err)
	}
	switch {
	case c.UUID == "":
		return Credentials{}, fmt.Errorf("loading runner credentials from %s: no uuid", path)
	case c.Token == "":
		return Credentials{}, fmt.Errorf("loading runner credentials from %s: no token", path)
	}
	return c, nil
}

// NewClient makes clients of the runner and ping services of the instance
// (its URL, like https://codeberg.org). They speak the Connect protocol
// with binary protobuf. When creds is not nil, every call but Register
// carries the runner's UUID and token. A nil httpClient means
// http.DefaultClient.
func NewClient(instance string, creds *Credentials, httpClient *http.Client) (runnerv1connect.RunnerServiceClient, pingv1connect.PingServiceClient) {
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	base := strings.TrimSuffix(instance, "/") + "/api/actions"
	var opts []connect.ClientOption
	if creds != nil {
		opts = append(opts, connect.WithInterceptors(authInterceptor(creds.UUID, creds.Token)))
	}
	return runnerv1connect.NewRunnerServiceClient(httpClient, base, opts...),
		pingv1connect.NewPingServiceClient(httpClient, base, opts...)
}

// authInterceptor adds the runner's UUID and token to every call but
// Register (which authenticates with the registration token instead).
func authInterceptor(uuid, token string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if req.Spec().IsClient && req.Spec().Procedure != runnerv1connect.RunnerServiceRegisterProcedure {
				req.Header().Set(headerRunnerUUID, uuid)
				req.Header().Set(headerRunnerToken, token)
			}
			return next(ctx, req)
		}
	}
}

// IsUnauthenticated reports whether err means the server does not know the
// runner (or its token). Forgejo sends the Unauthenticated code; Gitea
// sends gRPC status errors that arrive as code unknown, so the message is
// checked too.
func IsUnauthenticated(err error) bool {
	return hasCode(err, connect.CodeUnauthenticated) ||
		containsAny(err, "unregistered runner", "code = Unauthenticated")
}

// IsUnimplemented reports whether err means the server does not have the
// called RPC (Declare on servers older than Forgejo/Gitea 1.21, say).
func IsUnimplemented(err error) bool {
	return hasCode(err, connect.CodeUnimplemented) || containsAny(err, "code = Unimplemented")
}

// hasCode reports whether err is a connect error with code c.
func hasCode(err error, c connect.Code) bool {
	var ce *connect.Error
	return errors.As(err, &ce) && ce.Code() == c
}

// containsAny reports whether err's message contains one of subs.
func containsAny(err error, subs ...string) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	for _, s := range subs {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
