package forgejo

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	pingv1 "code.gitea.io/actions-proto-go/ping/v1"
	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"
	"github.com/google/uuid"
)

// RegisterOptions are the inputs of Register.
type RegisterOptions struct {
	// Instance is the server's URL, like https://codeberg.org.
	Instance string
	// Token is the registration token from the server's runner settings.
	Token string
	// Name is the runner's name as the server shows it.
	Name string
	// Labels are the label names the runner serves (name:scheme labels
	// are accepted too; only names are sent).
	Labels []string
	// Version is the runner's version as the server shows it.
	Version string
	// HTTP is the client to use; nil means http.DefaultClient.
	HTTP *http.Client
}

// Register registers a new runner with the instance: it pings the server,
// then registers with the registration token. The returned credentials
// (with Address set to the instance and Labels as given) are what
// SaveCredentials stores.
func Register(ctx context.Context, opts RegisterOptions) (Credentials, error) {
	switch {
	case opts.Instance == "":
		return Credentials{}, errors.New("registering: no instance URL")
	case opts.Token == "":
		return Credentials{}, fmt.Errorf("registering with %s: no registration token", opts.Instance)
	case opts.Name == "":
		return Credentials{}, fmt.Errorf("registering with %s: no runner name", opts.Instance)
	case len(opts.Labels) == 0:
		return Credentials{}, fmt.Errorf("registering with %s: no labels", opts.Instance)
	}
	names, err := labelNames(opts.Labels)
	if err != nil {
		return Credentials{}, fmt.Errorf("registering with %s: %w", opts.Instance, err)
	}
	runner, ping := NewClient(opts.Instance, nil, opts.HTTP)
	if _, err := ping.Ping(ctx, connect.NewRequest(&pingv1.PingRequest{Data: opts.Name})); err != nil {
		return Credentials{}, fmt.Errorf("pinging %s: %w", opts.Instance, err)
	}
	resp, err := runner.Register(ctx, connect.NewRequest(&runnerv1.RegisterRequest{
		Name:    opts.Name,
		Token:   opts.Token,
		Version: opts.Version,
		Labels:  names,
	}))
	if err != nil {
		return Credentials{}, fmt.Errorf("registering with %s: %w", opts.Instance, err)
	}
	r := resp.Msg.GetRunner()
	if r.GetUuid() == "" || r.GetToken() == "" {
		return Credentials{}, fmt.Errorf("registering with %s: the server returned no runner uuid or token", opts.Instance)
	}
	name := r.GetName()
	if name == "" {
		name = opts.Name
	}
	return Credentials{
		ID:      r.GetId(),
		UUID:    r.GetUuid(),
		Name:    name,
		Token:   r.GetToken(),
		Address: opts.Instance,
		Labels:  append([]string(nil), opts.Labels...),
	}, nil
}

// isOfflineSecret reports whether s has the shape of a Forgejo offline
// registration secret: 40 hexadecimal digits.
func isOfflineSecret(s string) bool {
	if len(s) != 40 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// OfflineCredentials makes the credentials of a runner that a Forgejo
// admin registered offline with
// `forgejo forgejo-cli actions register --secret <secret>`: the secret is
// 40 hex digits, the runner's UUID is made of the secret's first 16
// characters taken as raw bytes, and its token is the whole secret.
func OfflineCredentials(instance, secret, name string, labels []string) (Credentials, error) {
	if !isOfflineSecret(secret) {
		return Credentials{}, fmt.Errorf("making runner credentials for %s: the secret must be 40 hexadecimal digits", instance)
	}
	if _, err := labelNames(labels); err != nil {
		return Credentials{}, fmt.Errorf("making runner credentials for %s: %w", instance, err)
	}
	id, err := uuid.FromBytes([]byte(secret[:16]))
	if err != nil {
		return Credentials{}, fmt.Errorf("making runner credentials for %s: %w", instance, err)
	}
	return Credentials{
		UUID:    id.String(),
		Name:    name,
		Token:   secret,
		Address: instance,
		Labels:  append([]string(nil), labels...),
	}, nil
}
