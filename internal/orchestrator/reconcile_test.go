package orchestrator_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/solstice-ci/solstice/internal/agentapi"
	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/orchestrator"
	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/store/sqlite"
	"github.com/solstice-ci/solstice/internal/vm"
	"github.com/solstice-ci/solstice/internal/vm/localproc"
)

// TestReconcile starts an orchestrator on a store an earlier process of its
// host left behind, with a machine of that process still there, and checks
// what the restart does with each kind of job:
//
//	accepted (queued, leased by this host)  → started and run
//	running on this host                    → errored "orchestrator restarted", its machine reaped
//	running on a dead host (lease expired)  → errored by the rescue loop
//	accepted by a dead host                 → rescued and run
//	running on a live other host            → left alone
func TestReconcile(t *testing.T) {
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "jobs.db"))
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := jobspec.NewSealer(jobspec.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	machines := t.TempDir()
	const route = "test-route"
	url, sha := gitRepo(t, "#!/bin/sh\n")
	mk := func(host string, ttl time.Duration, state store.State) string {
		t.Helper()
		id := uuid.NewString()
		sealed, err := sealer.Seal(id, jobspec.Secrets{})
		if err != nil {
			t.Fatal(err)
		}
		req := jobspec.JobRequest{Version: jobspec.Version, JobID: id,
			Source:  jobspec.Source{Platform: jobspec.PlatformLocal, Instance: route, TaskID: id},
			Project: "test/repo", RepoURL: url, CommitSHA: sha, RunsOn: "local-test",
			Steps: []agentapi.Step{{Name: "hi", Run: "echo ran-" + id}}, Secrets: sealed}
		body, _ := jobspec.Marshal(req)
		if _, err := st.InsertJob(ctx, id, "local-test", body); err != nil {
			t.Fatal(err)
		}
		l, err := st.Claim(ctx, id, host, ttl)
		if err != nil {
			t.Fatal(err)
		}
		for _, to := range []store.State{store.Provisioning, store.Running} {
			if state == store.Queued {
				break
			}
			if err := st.Transition(ctx, l, map[store.State]store.State{store.Provisioning: store.Queued, store.Running: store.Provisioning}[to], to, store.Update{}); err != nil {
				t.Fatal(err)
			}
		}
		return id
	}
	accepted := mk("test-host", time.Minute, store.Queued)
	running := mk("test-host", time.Minute, store.Running)
	deadRunning := mk("dead-host", time.Millisecond, store.Running)
	deadAccepted := mk("dead-host", time.Millisecond, store.Queued)
	liveOther := mk("live-host", time.Hour, store.Running)
	// The machine the earlier process left for its running job.
	left, err := (&localproc.Backend{Dir: machines}).Create(ctx, vm.Spec{JobID: running})
	if err != nil {
		t.Fatal(err)
	}
	if err := left.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // the dead host's leases expire

	h := newHarnessOn(t, orchestrator.Config{Host: "test-host", Labels: []string{"local-test"}, MaxJobs: 4,
		RescueInterval: 200 * time.Millisecond}, st, sealer, machines)
	h.route = route
	evs := h.events(t, accepted, running, deadRunning, deadAccepted)

	for id, want := range map[string]string{accepted: jobspec.ResultSuccess, deadAccepted: jobspec.ResultSuccess} {
		if f := last(evs[id]); f.Result != want || !strings.Contains(logText(evs[id]), "ran-"+id) {
			t.Errorf("accepted job %s: %+v\n%s", id, f, logText(evs[id]))
		}
		h.waitState(t, id, store.Succeeded)
	}
	if f := last(evs[running]); f.Result != jobspec.ResultErrored || !strings.Contains(f.Message, "restarted") {
		t.Errorf("job running at the restart: %+v", f)
	}
	if f := last(evs[deadRunning]); f.Result != jobspec.ResultErrored || !strings.Contains(f.Message, "dead-host") {
		t.Errorf("job of the dead host: %+v", f)
	}
	h.waitState(t, running, store.Errored)
	h.waitState(t, deadRunning, store.Errored)
	if j, _ := st.GetJob(ctx, liveOther); j.State != store.Running || j.Host != "live-host" {
		t.Errorf("the live host's job was touched: %s on %s", j.State, j.Host)
	}
	if _, err := os.Stat(filepath.Join(machines, running)); !os.IsNotExist(err) {
		t.Errorf("the earlier process's machine was not reaped: %v", err)
	}
}
