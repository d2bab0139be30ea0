package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/testenv"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeAndOrchestrator starts `solstice serve` on the embedded queue and
// store, and `solstice orchestrator` on the machine's RabbitMQ and
// PostgreSQL, checks /healthz and /metrics, and stops each as SIGTERM would.
func TestServeAndOrchestrator(t *testing.T) {
	amqpURL, dbURL := testenv.AMQPURL(), testenv.DatabaseURL()
	key := fmt.Sprintf("%x", jobspec.NewKey())
	cases := []struct {
		name string
		args []string
	}{
		{"serve", []string{"serve", "-data-dir", t.TempDir()}},
		{"orchestrator", []string{"orchestrator", "-amqp-url", amqpURL, "-database-url", dbURL, "-sealing-key", key}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr := freeAddr(t)
			runtimeDir, _ := os.MkdirTemp("", "ss")
			defer os.RemoveAll(runtimeDir)
			args := append(c.args, "-listen", addr, "-accel", "tcg", "-runtime-dir", runtimeDir, "-labels", "linux-test", "-host", "test-"+c.name)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out bytes.Buffer
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, &cliEnv{stdout: &out, stderr: &out, getenv: func(string) string { return "" }}, args)
			}()
			get := func(path string) (int, string) {
				resp, err := http.Get("http://" + addr + path)
				if err != nil {
					return 0, err.Error()
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			var code int
			var body string
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if code, body = get("/healthz"); code == 200 {
					break
				}
				select {
				case rc := <-done:
					t.Fatalf("%s exited %d:\n%s", c.name, rc, out.String())
				default:
				}
			}
			if code != 200 || strings.TrimSpace(body) != "ok" {
				t.Fatalf("/healthz: %d %q\n%s", code, body, out.String())
			}
			if code, body = get("/metrics"); code != 200 || !strings.Contains(body, "solstice_orchestrator_jobs_accepted_total") {
				t.Fatalf("/metrics: %d\n%s", code, body)
			}
			cancel()
			select {
			case rc := <-done:
				if rc != 0 {
					t.Fatalf("%s exited %d after SIGTERM:\n%s", c.name, rc, out.String())
				}
			case <-time.After(30 * time.Second):
				t.Fatal("did not stop")
			}
		})
	}
}
