package agent

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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

// BenchmarkAgentPipe runs the agent binary on a step that writes 100 MB of
// 100-byte lines, with --events=stdout and both stdout and stderr pipes, as
// on the host: the benchmark reads the events pipe (counting lines) and
// drains the human log. The time runs from the start of the binary to its
// exit once all its output is read.
func BenchmarkAgentPipe(b *testing.B) {
	const size = 100 << 20
	bin := filepath.Join(b.TempDir(), "solstice-runner")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/solstice-ci/solstice/cmd/solstice-runner").CombinedOutput(); err != nil {
		b.Fatalf("building the agent: %v\n%s", err, out)
	}
	line := strings.Repeat("x", 84) + " a-secret-value" // 99 bytes and a newline
	job := "checkout: {skip: true}\nsecrets: {S: a-secret-value}\nsteps:\n  - run: yes '" + line + "' | head -c " + strconv.Itoa(size) + "\n"
	b.SetBytes(size)
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(bin, "--events=stdout")
		cmd.Env = append(os.Environ(), agentapi.EnvJobFile+"=-", agentapi.EnvWorkdir+"="+b.TempDir(), "TMPDIR="+b.TempDir())
		cmd.Stdin = strings.NewReader(job)
		cmd.Stderr = io.Discard // a pipe drained by exec
		events, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		lines, last := 0, []byte(nil)
		buf := make([]byte, 64<<10)
		for {
			n, err := events.Read(buf)
			lines += bytes.Count(buf[:n], []byte("\n"))
			last = append(last, buf[:n]...)
			last = last[len(last)-min(len(last), 300):]
			if err != nil {
				break
			}
		}
		if err := cmd.Wait(); err != nil {
			b.Fatalf("agent: %v", err)
		}
		if lines < size/100 || !bytes.Contains(last, []byte(`"kind":"job_finished"`)) {
			b.Fatalf("%d event lines, want more than %d, ending in job_finished; the end: %s", lines, size/100, last)
		}
	}
}
