package localrun

import (
	"strings"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/jobspec"
)

func TestPrinterStepLines(t *testing.T) {
	var b strings.Builder
	p := NewPrinter(&b)
	p.Register("j1", "build", []string{"Runs on ${{ runner.os }}", "second"})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	evs := []jobspec.Event{
		{JobID: "j1", Seq: 1, Kind: jobspec.EventStepStarted, Step: 0, Name: "Runs on Linux", Time: t0},
		{JobID: "j1", Seq: 2, Kind: jobspec.EventLog, Step: 0, Lines: []jobspec.LogLine{{Text: "hi\nthere"}}},
		{JobID: "j1", Seq: 2, Kind: jobspec.EventLog, Step: 0, Lines: []jobspec.LogLine{{Text: "duplicate"}}},
		{JobID: "j1", Seq: 3, Kind: jobspec.EventStepFinished, Step: 0, Result: jobspec.ResultSuccess, Time: t0.Add(1500 * time.Millisecond)},
		{JobID: "j1", Seq: 4, Kind: jobspec.EventStepStarted, Step: 1, Time: t0},
		{JobID: "j1", Seq: 5, Kind: jobspec.EventStepFinished, Step: 1, Result: jobspec.ResultFailure, ExitCode: 3, Time: t0.Add(time.Second)},
	}
	for i := range evs {
		p.Handle(&evs[i])
	}
	want := "[build] ▶ Runs on Linux\n[build]   hi\n[build]   there\n[build] ✓ Runs on Linux (success in 1.5s)\n" +
		"[build] ▶ second\n[build] ✗ second (failure, exit code 3 in 1s)\n"
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
