package agent

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/agentapi"
)

// waitFor polls s until it contains want; the deadline is far above the
// flush delays, so only a flush that never comes fails.
func waitFor(t *testing.T, s *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%q never left the buffer; got %q", want, s.String())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEmitterFlushes(t *testing.T) {
	t.Parallel()
	t.Run("when output pauses", func(t *testing.T) {
		t.Parallel()
		var ev, human syncBuffer
		e := newEmitter(&ev, &human, NewMasker(), nil)
		e.maxDelay = time.Hour // only the pause can flush
		e.line(0, StreamStdout, "one line")
		waitFor(t, &ev, `"line":"one line"`)
		waitFor(t, &human, "  one line\n")
		e.close()
	})
	t.Run("while output flows", func(t *testing.T) {
		t.Parallel()
		var ev syncBuffer
		e := newEmitter(&ev, nil, NewMasker(), nil)
		e.pause = time.Hour // the output never pauses long enough
		e.line(0, StreamStdout, "first")
		waitFor(t, &ev, `"line":"first"`)
		e.line(0, StreamStdout, "second")
		waitFor(t, &ev, `"line":"second"`)
		e.close()
	})
	t.Run("at close", func(t *testing.T) {
		t.Parallel()
		var ev, human syncBuffer
		e := newEmitter(&ev, &human, NewMasker(), nil)
		e.pause, e.maxDelay = time.Hour, time.Hour
		e.line(0, StreamStdout, "last")
		e.emit(agentapi.Event{Kind: agentapi.KindJobFinished, Step: agentapi.SetupStep})
		e.close()
		lines := strings.Split(strings.TrimSuffix(ev.String(), "\n"), "\n")
		if len(lines) != 2 || !strings.Contains(lines[0], `"line":"last"`) ||
			!strings.Contains(lines[1], `"kind":"job_finished"`) || !strings.Contains(human.String(), "last") {
			t.Fatalf("after close: events %q, human %q", ev.String(), human.String())
		}
		e.line(0, StreamStdout, "after close")
		if !strings.Contains(ev.String(), "after close") {
			t.Errorf("a line after close was held back: %q", ev.String())
		}
	})
}

// TestEmitterConcurrent writes from several goroutines while the timer
// flushes (run with -race): every line arrives, whole.
func TestEmitterConcurrent(t *testing.T) {
	t.Parallel()
	var ev syncBuffer
	e := newEmitter(&ev, nil, NewMasker(), nil)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				e.line(g, StreamStdout, strings.Repeat("x", i%300))
				if i%500 == 0 {
					time.Sleep(5 * time.Millisecond) // let the pause flush run
				}
			}
		})
	}
	wg.Wait()
	e.close()
	if got := len(decodeLines(t, ev.String())); got != 4*2000 {
		t.Fatalf("%d lines, want %d", got, 4*2000)
	}
}

// TestOutputLeavesWhileStepRuns checks that a step's line reaches the event
// stream while the step still runs, not only when it ends.
func TestOutputLeavesWhileStepRuns(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 100)
	w := writerFunc(func(p []byte) (int, error) {
		seen <- string(p)
		return len(p), nil
	})
	job := agentapi.JobFile{Checkout: agentapi.Checkout{Skip: true},
		Steps: []agentapi.Step{{Run: "echo first; sleep 2; echo second"}}}
	done := make(chan Result)
	go func() {
		done <- Run(t.Context(), Options{Job: job, Workdir: t.TempDir(), Events: w, Environ: os.Environ(), TempDir: t.TempDir()})
	}()
	var all strings.Builder
	for {
		select {
		case p := <-seen:
			all.WriteString(p)
			if strings.Contains(p, `"line":"first"`) && strings.Contains(p, `"line":"second"`) {
				t.Fatalf("first and second left together, when the step ended: %q", p)
			}
		case res := <-done:
			for len(seen) > 0 {
				all.WriteString(<-seen)
			}
			if res.ExitCode != 0 || !strings.Contains(all.String(), `"line":"second"`) || !strings.Contains(all.String(), `"kind":"job_finished"`) {
				t.Fatalf("exit %d, events:\n%s", res.ExitCode, all.String())
			}
			return
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
