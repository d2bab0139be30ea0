package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/store/postgres"
	"github.com/solstice-ci/solstice/internal/store/storetest"
)

// defaultURL is the test database of the development machines and of CI.
const defaultURL = "postgres://postgres@127.0.0.1:5432/test"

// testURL returns the database the tests use: SOLSTICE_TEST_DATABASE_URL,
// or defaultURL.
func testURL() string {
	if u := os.Getenv("SOLSTICE_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return defaultURL
}

// open opens a Store on the test database and closes it when the test
// ends. When the server cannot be reached it fails the test in CI
// (CI=true) and skips it elsewhere.
func open(t testing.TB) *postgres.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, testURL())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL test server unavailable: %v", err)
		}
		t.Skipf("PostgreSQL test server unavailable (set SOLSTICE_TEST_DATABASE_URL): %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func randID(t testing.TB, what string) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("reading random bytes: %v", err)
	}
	return fmt.Sprintf("pg-%s-%s", what, hex.EncodeToString(b[:]))
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t) })
}

// TestOpenConcurrently opens several Stores at once, as hosts starting
// together would: the migrations run under the advisory lock and none of
// the opens fails.
func TestOpenConcurrently(t *testing.T) {
	open(t).Close() // skip early when there is no server
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			s, err := postgres.Open(t.Context(), testURL())
			if err != nil {
				t.Errorf("Open: %v", err)
				return
			}
			_ = s.Close()
		})
	}
	wg.Wait()
}

// TestClaimRace has two Stores, as two hosts, race to claim the same jobs:
// for every job exactly one wins and the loser gets ErrConflict.
func TestClaimRace(t *testing.T) {
	ctx := t.Context()
	a, b := open(t), open(t)
	hosts := []string{randID(t, "host-a"), randID(t, "host-b")}
	stores := []*postgres.Store{a, b}
	label := randID(t, "label")
	for round := range 50 {
		id := randID(t, fmt.Sprintf("job%d", round))
		if _, err := a.InsertJob(ctx, id, label, nil); err != nil {
			t.Fatalf("InsertJob: %v", err)
		}
		var (
			wg     sync.WaitGroup
			leases [2]store.Lease
			errs   [2]error
			start  = make(chan struct{})
		)
		for i := range 2 {
			wg.Go(func() {
				<-start
				leases[i], errs[i] = stores[i].Claim(ctx, id, hosts[i], time.Hour)
			})
		}
		close(start)
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, store.ErrConflict):
				t.Fatalf("round %d: Claim by %s: %v, want nil or ErrConflict", round, hosts[i], err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d hosts won the claim, want exactly 1 (errors %v)", round, winners, errs)
		}
		w := 0
		if errs[0] != nil {
			w = 1
		}
		j, err := b.GetJob(ctx, id)
		if err != nil {
			t.Fatalf("GetJob: %v", err)
		}
		if j.Host != hosts[w] || j.LeaseToken != leases[w].Token || leases[w].Token != 1 {
			t.Fatalf("round %d: job host %q token %d, winner %s with token %d", round, j.Host, j.LeaseToken, hosts[w], leases[w].Token)
		}
		// Only the winner's lease moves the job on.
		if err := stores[1-w].Transition(ctx, store.Lease{JobID: id, Host: hosts[1-w], Token: leases[w].Token},
			store.Queued, store.Provisioning, store.Update{}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("round %d: Transition by the loser: %v, want ErrConflict", round, err)
		}
		if err := stores[w].Transition(ctx, leases[w], store.Queued, store.Provisioning, store.Update{}); err != nil {
			t.Fatalf("round %d: Transition by the winner: %v", round, err)
		}
	}
}

// TestNotFound checks that guarded writes on a missing job say so.
func TestNotFound(t *testing.T) {
	ctx := t.Context()
	s := open(t)
	l := store.Lease{JobID: randID(t, "missing"), Host: randID(t, "host"), Token: 1}
	if err := s.Transition(ctx, l, store.Queued, store.Provisioning, store.Update{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Transition of a missing job: %v, want ErrNotFound", err)
	}
	if err := s.SetVM(ctx, l, []byte(`{}`)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetVM of a missing job: %v, want ErrNotFound", err)
	}
}

func BenchmarkInsertClaim(b *testing.B) {
	ctx := b.Context()
	s := open(b)
	req := []byte(`{"job_id":"x","runs_on":"linux","steps":[{"run":"make test"}]}`)
	prefix := randID(b, "bench")
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("%s-%d", prefix, i)
		i++
		if _, err := s.InsertJob(ctx, id, prefix, req); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Claim(ctx, id, prefix, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}
