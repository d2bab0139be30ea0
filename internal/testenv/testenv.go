// Package testenv holds what the tests of several packages need from the
// machine they run on: the URLs of its RabbitMQ and PostgreSQL, the rule for
// when those cannot be reached, and the guest agent built for this host.
// Only tests import it.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// AMQPURL is the RabbitMQ of the tests: SOLSTICE_TEST_AMQP_URL, else the
// machine's own on loopback.
func AMQPURL() string {
	if u := os.Getenv("SOLSTICE_TEST_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// DatabaseURL is the PostgreSQL of the tests: SOLSTICE_TEST_DATABASE_URL,
// else the machine's own database test on loopback.
func DatabaseURL() string {
	if u := os.Getenv("SOLSTICE_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/test"
}

// Unreachable ends a test that needs a service it could not reach: it
// fails when CI=true (the service must be there) and skips otherwise.
func Unreachable(t testing.TB, what string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not reachable (CI=true: this test must run): %v", what, err)
	}
	t.Skipf("%s is not reachable: %v", what, err)
}

var agent struct {
	once sync.Once
	path string
	err  error
}

// AgentBinary builds solstice-runner for this host once per test process
// and returns its path (in the temporary folder, removed by nobody: it is
// named after the process id).
func AgentBinary(t testing.TB) string {
	t.Helper()
	agent.once.Do(func() {
		agent.path = filepath.Join(os.TempDir(), fmt.Sprintf("solstice-runner-test-%d", os.Getpid()))
		cmd := exec.Command("go", "build", "-o", agent.path, "github.com/solstice-ci/solstice/cmd/solstice-runner")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agent.err = fmt.Errorf("building the agent: %w\n%s", err, out)
		}
	})
	if agent.err != nil {
		t.Fatal(agent.err)
	}
	return agent.path
}
