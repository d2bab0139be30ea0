package sqlite_test

import (
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/store"
	"github.com/solstice-ci/solstice/internal/store/sqlite"
	"github.com/solstice-ci/solstice/internal/store/storetest"
)

func open(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, filepath.Join(t.TempDir(), "solstice.db"))
	})
}

// TestContractSharedFile runs the suite with every subtest opening its own
// Store on one file, as several processes would.
func TestContractSharedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.db")
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, path) })
}

func TestOpenRefusesNonFiles(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file:x.db", "x.db?mode=ro"} {
		if s, err := sqlite.Open(t.Context(), p); err == nil {
			_ = s.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

// TestReopen checks that jobs, leases, sequence numbers and reports survive
// closing and reopening the database, and that migrations run once.
func TestReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "solstice.db")
	s := open(t, path)
	if _, err := s.InsertJob(ctx, "job-1", "linux", []byte(`{"job_id":"job-1"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.InsertJob(ctx, "job-2", "linux", []byte(`{"job_id":"job-2"}`)); err != nil {
		t.Fatal(err)
	}
	l, err := s.Claim(ctx, "job-1", "host-a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Transition(ctx, l, store.Queued, store.Provisioning, store.Update{VM: []byte(`{"vm":1}`)}); err != nil {
		t.Fatal(err)
	}
	first, err := s.ReserveSeq(ctx, "job-1", 10)
	if err != nil {
		t.Fatal(err)
	}
	end := first + 9 // the highest number reserved so far
	if err := s.PutReport(ctx, "forgejo/r/1", []byte("state")); err != nil {
		t.Fatal(err)
	}
	before, err := s.ListJobs(ctx, store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	for range 2 {
		s = open(t, path)
		after, err := s.ListJobs(ctx, store.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Fatalf("after reopen: %d jobs, want %d", len(after), len(before))
		}
		for i := range after {
			a, b := after[i], before[i]
			if a.ID != b.ID || a.State != b.State || a.Host != b.Host || a.LeaseToken != b.LeaseToken ||
				!a.LeaseExpiresAt.Equal(b.LeaseExpiresAt) || !slices.Equal(a.VM, b.VM) || a.EventSeq != b.EventSeq ||
				!a.CreatedAt.Equal(b.CreatedAt) || !a.UpdatedAt.Equal(b.UpdatedAt) || !slices.Equal(a.Request, b.Request) {
				t.Fatalf("after reopen:\n got %+v\nwant %+v", a, b)
			}
		}
		// The restarted host reclaims its job; the old token is stale.
		l2, err := s.Claim(ctx, "job-1", "host-a", time.Hour)
		if err != nil || l2.Token <= l.Token {
			t.Fatalf("Claim after reopen = %+v, %v; want token > %d", l2, err, l.Token)
		}
		if err := s.Transition(ctx, l, store.Provisioning, store.Running, store.Update{}); err == nil {
			t.Fatal("Transition under the lease from before the restart succeeded")
		}
		l = l2
		// Sequence numbers are not reused.
		next, err := s.ReserveSeq(ctx, "job-1", 1)
		if err != nil || next <= end {
			t.Fatalf("ReserveSeq after reopen = %d, %v; want > %d", next, err, end)
		}
		end = next
		if v, err := s.GetReport(ctx, "forgejo/r/1"); err != nil || string(v) != "state" {
			t.Fatalf("GetReport after reopen = %q, %v", v, err)
		}
		before, err = s.ListJobs(ctx, store.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
}

// TestTwoStoresOneFile has two Stores (as two processes would) reserve
// sequence numbers of one job at once.
func TestTwoStoresOneFile(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "solstice.db")
	a, b := open(t, path), open(t, path)
	defer a.Close()
	defer b.Close()
	if _, err := a.InsertJob(ctx, "job", "linux", nil); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		seen  = map[int64]bool{}
		wg    sync.WaitGroup
		total int
	)
	for i := range 20 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for range 10 {
				first, err := s.ReserveSeq(ctx, "job", 3)
				if err != nil {
					t.Errorf("ReserveSeq: %v", err)
					return
				}
				mu.Lock()
				for n := first; n < first+3; n++ {
					if seen[n] {
						t.Errorf("sequence number %d reserved twice", n)
					}
					seen[n] = true
				}
				total += 3
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != total || total != 600 {
		t.Fatalf("%d distinct of %d reserved, want 600", len(seen), total)
	}
	j, err := b.GetJob(ctx, "job")
	if err != nil || j.EventSeq != 600 {
		t.Fatalf("GetJob = EventSeq %d, %v; want 600", j.EventSeq, err)
	}
}

func BenchmarkInsertClaim(b *testing.B) {
	ctx := b.Context()
	s := open(b, filepath.Join(b.TempDir(), "bench.db"))
	defer s.Close()
	req := []byte(`{"job_id":"x","runs_on":"linux","steps":[{"run":"make test"}]}`)
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("job-%d", i)
		i++
		if _, err := s.InsertJob(ctx, id, "linux", req); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Claim(ctx, id, "host-a", time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}
