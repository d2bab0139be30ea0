package agent

import (
	"context"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// BenchmarkSteps compares 100 trivial steps run by the agent with 100 runs
// of plain `sh -c true`: the per-step overhead of the agent is the
// difference (docs/benchmarks.md).
func BenchmarkSteps(b *testing.B) {
	steps := make([]agentapi.Step, 100)
	for i := range steps {
		steps[i] = agentapi.Step{Run: "true"}
	}
	b.Run("agent-100-steps", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			res := Run(context.Background(), Options{Job: agentapi.JobFile{Checkout: agentapi.Checkout{Skip: true}, Steps: steps},
				Workdir: b.TempDir(), Events: io.Discard, Environ: os.Environ(), TempDir: b.TempDir()})
			if res.ExitCode != 0 {
				b.Fatalf("exit %d", res.ExitCode)
			}
		}
	})
	b.Run("sh-c-100-times", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			for range 100 {
				if err := exec.Command("sh", "-c", "true").Run(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// BenchmarkOutput measures the output path of the agent — line cutting,
// workflow commands, masking with 10 secrets, JSON events and the human
// log — on 100-byte lines.
func BenchmarkOutput(b *testing.B) {
	secrets := make([]string, 10)
	for i := range secrets {
		secrets[i] = "secret-value-" + strings.Repeat(string(rune('a'+i)), 12)
	}
	line := strings.Repeat("x", 60) + " " + secrets[3] + " " + strings.Repeat("y", 8) + "\n"
	chunk := []byte(strings.Repeat(line, 1000))
	m := NewMasker(secrets...)
	e := newEmitter(io.Discard, io.Discard, m, nil)
	w := &lineWriter{e: e, cmds: &commands{mask: m}, step: 0, stream: StreamStdout}
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w.Write(chunk)
	}
}

// BenchmarkStepOutput runs a step that writes 20 MB of 100-byte lines,
// end to end through a real shell and pipe.
func BenchmarkStepOutput(b *testing.B) {
	const size = 20 << 20
	job := agentapi.JobFile{Checkout: agentapi.Checkout{Skip: true}, Secrets: map[string]string{"S": "a-secret-value"},
		Steps: []agentapi.Step{{Run: "yes 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx a-secret-value' | head -c " + strconv.Itoa(size)}}}
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		res := Run(context.Background(), Options{Job: job, Workdir: b.TempDir(), Events: io.Discard, Environ: os.Environ(), TempDir: b.TempDir()})
		if res.ExitCode != 0 {
			b.Fatalf("exit %d", res.ExitCode)
		}
	}
}
