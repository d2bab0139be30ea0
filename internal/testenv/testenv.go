// Package testenv holds what the tests of several packages need from the
// machine they run on: the URLs of its RabbitMQ and PostgreSQL, the rule for
// when those cannot be reached, and the guest agent built for this host.
// Only tests import it.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/queue/amqpq"
	"github.com/solstice-ci/solstice/internal/store/postgres"
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

// Services opens the machine's RabbitMQ, under a prefix of its own (name
// and a random part, returned) so no other test's queues interfere, and
// its PostgreSQL; both are closed when t ends. Unreachable services end t
// as Unreachable says.
func Services(t testing.TB, name string) (*amqpq.Queue, *postgres.Store, string) {
	t.Helper()
	prefix := "solstice-" + name + "-" + uuid.NewString()[:8]
	q, err := amqpq.Open(t.Context(), AMQPURL(), amqpq.Options{Prefix: prefix})
	if err != nil {
		Unreachable(t, "RabbitMQ", err)
	}
	st, err := postgres.Open(t.Context(), DatabaseURL())
	if err != nil {
		q.Close()
		Unreachable(t, "PostgreSQL", err)
	}
	t.Cleanup(func() { q.Close(); st.Close() })
	return q, st, prefix
}

// Buffer is a bytes.Buffer that many goroutines may write at once (a
// child process's two streams, loggers).
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
