// Package storetest is the contract test suite of store.Store. Every
// implementation runs it from its own tests:
//
//	func TestContract(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { ... })
//	}
//
// Every subtest uses job ids, labels, hosts and report keys made unique with
// a random suffix, so the suite can run against a database shared with
// other tests (and with itself, in parallel).
package storetest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/solstice-ci/solstice/internal/store"
)

// Lease durations of the suite: long enough never to expire during a test,
// and short enough to expire after a short sleep.
const (
	longTTL    = time.Hour
	shortTTL   = 50 * time.Millisecond
	afterShort = 100 * time.Millisecond
)

// Run runs the contract suite. open is called once per subtest; the Store it
// returns is closed by the suite when the subtest ends (open may register
// its own cleanup as well; a second Close may fail).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"InsertJobIdempotent", testInsertJobIdempotent},
		{"GetJobNotFound", testGetJobNotFound},
		{"ListJobs", testListJobs},
		{"Claim", testClaim},
		{"ClaimAfterExpiry", testClaimAfterExpiry},
		{"ClaimTerminal", testClaimTerminal},
		{"TransitionPath", testTransitionPath},
		{"TransitionGuards", testTransitionGuards},
		{"TransitionTerminalFromEveryLiveState", testTransitionTerminal},
		{"SetVM", testSetVM},
		{"Heartbeat", testHeartbeat},
		{"ReserveSeq", testReserveSeq},
		{"ReserveSeqConcurrent", testReserveSeqConcurrent},
		{"RequestCancel", testRequestCancel},
		{"Reports", testReports},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { _ = s.Close() })
			tc.fn(t, s)
		})
	}
}

// unique returns an id no other test uses: the test's name, what, and a
// random suffix.
func unique(t *testing.T, what string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("reading random bytes: %v", err)
	}
	n := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	return fmt.Sprintf("st-%s-%s-%s", n, what, hex.EncodeToString(b[:]))
}

func insert(t *testing.T, s store.Store, id, label string) []byte {
	t.Helper()
	req := fmt.Appendf(nil, `{"job_id":%q,"runs_on":%q}`, id, label)
	ok, err := s.InsertJob(t.Context(), id, label, req)
	if err != nil {
		t.Fatalf("InsertJob(%s): %v", id, err)
	}
	if !ok {
		t.Fatalf("InsertJob(%s): inserted = false for a new id", id)
	}
	return req
}

func get(t *testing.T, s store.Store, id string) store.Job {
	t.Helper()
	j, err := s.GetJob(t.Context(), id)
	if err != nil {
		t.Fatalf("GetJob(%s): %v", id, err)
	}
	return j
}

func claim(t *testing.T, s store.Store, id, host string, ttl time.Duration) store.Lease {
	t.Helper()
	l, err := s.Claim(t.Context(), id, host, ttl)
	if err != nil {
		t.Fatalf("Claim(%s, %s): %v", id, host, err)
	}
	if l.JobID != id || l.Host != host {
		t.Fatalf("Claim(%s, %s) = %+v, wrong job or host", id, host, l)
	}
	return l
}

func transition(t *testing.T, s store.Store, l store.Lease, from, to store.State, u store.Update) {
	t.Helper()
	if err := s.Transition(t.Context(), l, from, to, u); err != nil {
		t.Fatalf("Transition(%s, %s → %s): %v", l.JobID, from, to, err)
	}
}

// newJob inserts a job and claims it for a new host with a long lease.
func newJob(t *testing.T, s store.Store) (store.Lease, string) {
	t.Helper()
	id, label := unique(t, "job"), unique(t, "label")
	insert(t, s, id, label)
	return claim(t, s, id, unique(t, "host"), longTTL), label
}

// sameJob fails the test if got and want differ in any field.
func sameJob(t *testing.T, what string, got, want store.Job) {
	t.Helper()
	eqTime := func(a, b time.Time) bool { return a.Equal(b) }
	switch {
	case got.ID != want.ID, got.Label != want.Label, got.State != want.State,
		!bytes.Equal(got.Request, want.Request), got.Host != want.Host,
		got.LeaseToken != want.LeaseToken, !eqTime(got.LeaseExpiresAt, want.LeaseExpiresAt),
		!bytes.Equal(got.VM, want.VM), got.EventSeq != want.EventSeq,
		got.CancelRequested != want.CancelRequested, got.CancelReason != want.CancelReason,
		got.Result != want.Result, got.Message != want.Message,
		!eqTime(got.CreatedAt, want.CreatedAt), !eqTime(got.UpdatedAt, want.UpdatedAt):
		t.Fatalf("%s: job changed:\n got %+v\nwant %+v", what, got, want)
	}
}

func ids(jobs []store.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

func testInsertJobIdempotent(t *testing.T, s store.Store) {
	ctx := t.Context()
	id, label := unique(t, "job"), unique(t, "label")
	before := time.Now()
	req := insert(t, s, id, label)
	j := get(t, s, id)
	if j.ID != id || j.Label != label || j.State != store.Queued || !bytes.Equal(j.Request, req) {
		t.Fatalf("inserted job = %+v", j)
	}
	if j.Host != "" || j.LeaseToken != 0 || !j.LeaseExpiresAt.IsZero() || j.VM != nil || j.EventSeq != 0 ||
		j.CancelRequested || j.CancelReason != "" || j.Result != "" || j.Message != "" {
		t.Fatalf("new job has non-zero lease, VM, sequence, cancel or result fields: %+v", j)
	}
	if j.CreatedAt.Before(before.Add(-time.Minute)) || j.CreatedAt.After(time.Now().Add(time.Minute)) {
		t.Errorf("CreatedAt = %v, want about %v", j.CreatedAt, before)
	}
	if j.UpdatedAt.Before(j.CreatedAt) {
		t.Errorf("UpdatedAt %v before CreatedAt %v", j.UpdatedAt, j.CreatedAt)
	}

	// A redelivered message inserts the same id again, maybe with another
	// body; nothing changes, even after the job moved on.
	l := claim(t, s, id, unique(t, "host"), longTTL)
	transition(t, s, l, store.Queued, store.Provisioning, store.Update{})
	j = get(t, s, id)
	ok, err := s.InsertJob(ctx, id, unique(t, "other-label"), []byte(`{"other":true}`))
	if err != nil || ok {
		t.Fatalf("second InsertJob = %v, %v; want false, nil", ok, err)
	}
	sameJob(t, "second InsertJob", get(t, s, id), j)
}

func testGetJobNotFound(t *testing.T, s store.Store) {
	_, err := s.GetJob(t.Context(), unique(t, "missing"))
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetJob of a missing id: err = %v, want ErrNotFound", err)
	}
}

func testListJobs(t *testing.T, s store.Store) {
	ctx := t.Context()
	labelA, labelB := unique(t, "label-a"), unique(t, "label-b")
	hostA, hostB := unique(t, "host-a"), unique(t, "host-b")
	var all []string
	for i := range 6 {
		id := unique(t, fmt.Sprintf("job%d", i))
		label := labelA
		if i%2 == 1 {
			label = labelB
		}
		insert(t, s, id, label)
		all = append(all, id)
		// Distinct creation times even for stores with microsecond ones.
		time.Sleep(2 * time.Millisecond)
	}
	// job0: queued, no host. job1: queued, hostA. job2: provisioning, hostA.
	// job3: running, hostB. job4: succeeded (no host). job5: queued, hostB.
	claim(t, s, all[1], hostA, longTTL)
	l2 := claim(t, s, all[2], hostA, longTTL)
	transition(t, s, l2, store.Queued, store.Provisioning, store.Update{})
	l3 := claim(t, s, all[3], hostB, longTTL)
	transition(t, s, l3, store.Queued, store.Provisioning, store.Update{})
	transition(t, s, l3, store.Provisioning, store.Running, store.Update{})
	l4 := claim(t, s, all[4], hostB, longTTL)
	transition(t, s, l4, store.Queued, store.Provisioning, store.Update{})
	transition(t, s, l4, store.Provisioning, store.Running, store.Update{})
	transition(t, s, l4, store.Running, store.Succeeded, store.Update{})
	claim(t, s, all[5], hostB, longTTL)

	// Restrict to this test's jobs: the database may be shared.
	mine := func(jobs []store.Job) []string {
		var out []string
		for _, id := range ids(jobs) {
			if slices.Contains(all, id) {
				out = append(out, id)
			}
		}
		return out
	}
	cases := []struct {
		name string
		f    store.Filter
		want []int
		own  bool // the filter alone selects only this test's jobs
	}{
		{"label a", store.Filter{Label: labelA}, []int{0, 2, 4}, true},
		{"label b", store.Filter{Label: labelB}, []int{1, 3, 5}, true},
		{"host a", store.Filter{Host: hostA}, []int{1, 2}, true},
		{"host b", store.Filter{Host: hostB}, []int{3, 5}, true},
		{"queued", store.Filter{States: []store.State{store.Queued}}, []int{0, 1, 5}, false},
		{"live", store.Filter{States: []store.State{store.Provisioning, store.Running}}, []int{2, 3}, false},
		{"terminal", store.Filter{States: []store.State{store.Succeeded, store.Failed, store.Cancelled, store.Errored}}, []int{4}, false},
		{"host b queued", store.Filter{Host: hostB, States: []store.State{store.Queued}}, []int{5}, true},
		{"label a host a", store.Filter{Label: labelA, Host: hostA}, []int{2}, true},
		{"label b live", store.Filter{Label: labelB, States: []store.State{store.Running, store.Provisioning}}, []int{3}, true},
		{"everything", store.Filter{}, []int{0, 1, 2, 3, 4, 5}, false},
	}
	for _, c := range cases {
		jobs, err := s.ListJobs(ctx, c.f)
		if err != nil {
			t.Fatalf("ListJobs(%s): %v", c.name, err)
		}
		var want []string
		for _, i := range c.want {
			want = append(want, all[i])
		}
		if got := mine(jobs); !slices.Equal(got, want) {
			t.Errorf("ListJobs(%s) = %q, want %q (oldest first)", c.name, got, want)
		}
		if c.own && len(jobs) != len(want) {
			t.Errorf("ListJobs(%s) returned %d jobs, want %d", c.name, len(jobs), len(want))
		}
		for i := 1; i < len(jobs); i++ {
			if jobs[i].CreatedAt.Before(jobs[i-1].CreatedAt) {
				t.Errorf("ListJobs(%s): %s created before %s but listed after it", c.name, jobs[i].ID, jobs[i-1].ID)
			}
		}
	}
	// Full rows come back.
	jobs, err := s.ListJobs(ctx, store.Filter{Host: hostB, States: []store.State{store.Running}})
	if err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	if len(jobs) != 1 {
		t.Fatalf("ListJobs(host b running) = %q, want one job", ids(jobs))
	}
	sameJob(t, "ListJobs row", jobs[0], get(t, s, all[3]))
}

func testClaim(t *testing.T, s store.Store) {
	ctx := t.Context()
	id := unique(t, "job")
	insert(t, s, id, unique(t, "label"))
	hostA, hostB := unique(t, "host-a"), unique(t, "host-b")

	if _, err := s.Claim(ctx, unique(t, "missing"), hostA, longTTL); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Claim of a missing job: err = %v, want ErrNotFound", err)
	}

	before := time.Now()
	l1 := claim(t, s, id, hostA, longTTL)
	j := get(t, s, id)
	if j.Host != hostA || j.LeaseToken != l1.Token || j.State != store.Queued {
		t.Fatalf("after Claim: host %q token %d state %s; want %q %d queued", j.Host, j.LeaseToken, j.State, hostA, l1.Token)
	}
	if j.LeaseExpiresAt.Before(before.Add(longTTL - time.Minute)) {
		t.Errorf("LeaseExpiresAt = %v, want about %v", j.LeaseExpiresAt, before.Add(longTTL))
	}

	// Another host conflicts while the lease lives; nothing changes.
	_, err := s.Claim(ctx, id, hostB, longTTL)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Claim by another host of a live lease: err = %v, want ErrConflict", err)
	}
	sameJob(t, "conflicting Claim", get(t, s, id), j)

	// The same host claims again (a restarted orchestrator), with a higher
	// token; the old token is stale from then on.
	l2 := claim(t, s, id, hostA, longTTL)
	if l2.Token <= l1.Token {
		t.Fatalf("second Claim token %d, want > %d", l2.Token, l1.Token)
	}
	if err := s.Transition(ctx, l1, store.Queued, store.Provisioning, store.Update{}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Transition under the first, stale lease: err = %v, want ErrConflict", err)
	}
	transition(t, s, l2, store.Queued, store.Provisioning, store.Update{})
	// Claims do not change the state.
	l3 := claim(t, s, id, hostA, longTTL)
	if l3.Token <= l2.Token {
		t.Fatalf("third Claim token %d, want > %d", l3.Token, l2.Token)
	}
	if got := get(t, s, id).State; got != store.Provisioning {
		t.Fatalf("state after Claim = %s, want provisioning", got)
	}
}

func testClaimAfterExpiry(t *testing.T, s store.Store) {
	ctx := t.Context()
	id := unique(t, "job")
	insert(t, s, id, unique(t, "label"))
	hostA, hostB := unique(t, "host-a"), unique(t, "host-b")
	la := claim(t, s, id, hostA, shortTTL)
	transition(t, s, la, store.Queued, store.Provisioning, store.Update{})
	time.Sleep(afterShort)

	lb := claim(t, s, id, hostB, longTTL)
	if lb.Token <= la.Token {
		t.Fatalf("token after takeover %d, want > %d", lb.Token, la.Token)
	}
	if j := get(t, s, id); j.Host != hostB || j.State != store.Provisioning {
		t.Fatalf("after takeover: host %q state %s, want %q provisioning", j.Host, j.State, hostB)
	}
	// The old host is fenced off.
	if err := s.Transition(ctx, la, store.Provisioning, store.Running, store.Update{}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Transition by the old host: err = %v, want ErrConflict", err)
	}
	if err := s.SetVM(ctx, la, []byte(`{}`)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("SetVM by the old host: err = %v, want ErrConflict", err)
	}
	if _, err := s.Claim(ctx, id, hostA, longTTL); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Claim back by the old host: err = %v, want ErrConflict", err)
	}
	transition(t, s, lb, store.Provisioning, store.Running, store.Update{})
}

func testClaimTerminal(t *testing.T, s store.Store) {
	ctx := t.Context()
	l, _ := newJob(t, s)
	transition(t, s, l, store.Queued, store.Errored, store.Update{})
	j := get(t, s, l.JobID)
	for _, host := range []string{l.Host, unique(t, "other")} {
		if _, err := s.Claim(ctx, l.JobID, host, longTTL); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Claim of a terminal job by %s: err = %v, want ErrConflict", host, err)
		}
	}
	sameJob(t, "Claim of a terminal job", get(t, s, l.JobID), j)
}

func testTransitionPath(t *testing.T, s store.Store) {
	l, _ := newJob(t, s)
	id := l.JobID
	transition(t, s, l, store.Queued, store.Provisioning, store.Update{})
	if j := get(t, s, id); j.State != store.Provisioning || j.Host != l.Host || j.LeaseToken != l.Token {
		t.Fatalf("after queued → provisioning: %+v", j)
	}
	vm := []byte(`{"name":"vm-1","pid":42}`)
	transition(t, s, l, store.Provisioning, store.Running, store.Update{VM: vm})
	j := get(t, s, id)
	if j.State != store.Running || !bytes.Equal(j.VM, vm) || j.Host != l.Host || j.LeaseExpiresAt.IsZero() {
		t.Fatalf("after provisioning → running with VM: %+v", j)
	}
	if j.Result != "" || j.Message != "" {
		t.Fatalf("nil Update fields changed result/message: %+v", j)
	}

	result, msg := "success", "all steps passed"
	transition(t, s, l, store.Running, store.Succeeded, store.Update{Result: &result, Message: &msg})
	j = get(t, s, id)
	if j.State != store.Succeeded || j.Result != result || j.Message != msg {
		t.Fatalf("after running → succeeded: state %s result %q message %q", j.State, j.Result, j.Message)
	}
	if j.Host != "" || !j.LeaseExpiresAt.IsZero() {
		t.Fatalf("terminal state kept the lease: host %q expires %v", j.Host, j.LeaseExpiresAt)
	}
	if !bytes.Equal(j.VM, vm) {
		t.Fatalf("terminal transition without VM changed it: %q", j.VM)
	}
	// Nothing leaves a terminal state.
	for _, to := range []store.State{store.Running, store.Failed, store.Errored, store.Cancelled} {
		if err := s.Transition(t.Context(), l, store.Succeeded, to, store.Update{}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Transition succeeded → %s: err = %v, want ErrConflict", to, err)
		}
	}
	sameJob(t, "transitions out of a terminal state", get(t, s, id), j)
}

func testTransitionGuards(t *testing.T, s store.Store) {
	ctx := t.Context()
	l, _ := newJob(t, s)
	id := l.JobID
	transition(t, s, l, store.Queued, store.Provisioning, store.Update{})
	before := get(t, s, id)
	result, msg := "failure", "should not be stored"
	u := store.Update{Result: &result, Message: &msg, VM: []byte(`{"x":1}`)}

	cases := []struct {
		name     string
		l        store.Lease
		from, to store.State
	}{
		{"wrong from-state", l, store.Queued, store.Provisioning},
		{"wrong from-state to running", l, store.Running, store.Succeeded},
		{"stale token", store.Lease{JobID: id, Host: l.Host, Token: l.Token - 1}, store.Provisioning, store.Running},
		{"future token", store.Lease{JobID: id, Host: l.Host, Token: l.Token + 1}, store.Provisioning, store.Running},
		{"no edge provisioning → queued", l, store.Provisioning, store.Queued},
		{"no edge provisioning → succeeded", l, store.Provisioning, store.Succeeded},
		{"no edge provisioning → provisioning", l, store.Provisioning, store.Provisioning},
		{"invalid state", l, store.Provisioning, store.State("exploded")},
	}
	for _, c := range cases {
		err := s.Transition(ctx, c.l, c.from, c.to, u)
		if !errors.Is(err, store.ErrConflict) {
			t.Errorf("%s: err = %v, want ErrConflict", c.name, err)
		}
		sameJob(t, c.name, get(t, s, id), before)
	}
	transition(t, s, l, store.Provisioning, store.Running, store.Update{})
}

func testTransitionTerminal(t *testing.T, s store.Store) {
	// Every edge into a terminal state releases the lease and stores result
	// and message.
	paths := [][]store.State{
		{store.Queued, store.Cancelled},
		{store.Queued, store.Errored},
		{store.Queued, store.Provisioning, store.Cancelled},
		{store.Queued, store.Provisioning, store.Errored},
		{store.Queued, store.Provisioning, store.Failed},
		{store.Queued, store.Provisioning, store.Running, store.Succeeded},
		{store.Queued, store.Provisioning, store.Running, store.Failed},
		{store.Queued, store.Provisioning, store.Running, store.Cancelled},
		{store.Queued, store.Provisioning, store.Running, store.Errored},
	}
	for _, p := range paths {
		l, _ := newJob(t, s)
		for i := 1; i < len(p); i++ {
			var u store.Update
			if i == len(p)-1 {
				r, m := string(p[i]), "ended in "+string(p[i])
				u = store.Update{Result: &r, Message: &m}
			}
			transition(t, s, l, p[i-1], p[i], u)
		}
		end := p[len(p)-1]
		j := get(t, s, l.JobID)
		if j.State != end || j.Result != string(end) || j.Message != "ended in "+string(end) {
			t.Errorf("%v: state %s result %q message %q", p, j.State, j.Result, j.Message)
		}
		if j.Host != "" || !j.LeaseExpiresAt.IsZero() {
			t.Errorf("%v: lease kept after terminal state: host %q expires %v", p, j.Host, j.LeaseExpiresAt)
		}
		if j.LeaseToken != l.Token {
			t.Errorf("%v: lease token %d after release, want %d kept", p, j.LeaseToken, l.Token)
		}
	}
}

func testSetVM(t *testing.T, s store.Store) {
	ctx := t.Context()
	l, _ := newJob(t, s)
	transition(t, s, l, store.Queued, store.Provisioning, store.Update{})
	vm1 := []byte(`{"name":"vm-1"}`)
	if err := s.SetVM(ctx, l, vm1); err != nil {
		t.Fatalf("SetVM: %v", err)
	}
	if got := get(t, s, l.JobID).VM; !bytes.Equal(got, vm1) {
		t.Fatalf("VM = %q, want %q", got, vm1)
	}
	vm2 := []byte(`{"name":"vm-2","disk":"/var/lib/x.qcow2"}`)
	if err := s.SetVM(ctx, l, vm2); err != nil {
		t.Fatalf("SetVM again: %v", err)
	}
	j := get(t, s, l.JobID)
	if !bytes.Equal(j.VM, vm2) || j.State != store.Provisioning {
		t.Fatalf("after second SetVM: VM %q state %s", j.VM, j.State)
	}
	stale := l
	stale.Token--
	if err := s.SetVM(ctx, stale, []byte(`{"stale":true}`)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("SetVM with a stale token: err = %v, want ErrConflict", err)
	}
	sameJob(t, "SetVM with a stale token", get(t, s, l.JobID), j)
	if err := s.SetVM(ctx, store.Lease{JobID: unique(t, "missing"), Host: l.Host, Token: 1}, vm1); err == nil {
		t.Fatal("SetVM of a missing job succeeded")
	}
}

func testHeartbeat(t *testing.T, s store.Store) {
	ctx := t.Context()
	host, other := unique(t, "host"), unique(t, "other")
	label := unique(t, "label")
	mk := func(h string, ttl time.Duration) store.Lease {
		id := unique(t, "job")
		insert(t, s, id, label)
		return claim(t, s, id, h, ttl)
	}
	// host's leases do not expire before the heartbeat, however slow the
	// test runs; the other host's one expires soon.
	queued := mk(host, time.Minute) // claimed but not started
	running := mk(host, time.Minute)
	transition(t, s, running, store.Queued, store.Provisioning, store.Update{})
	transition(t, s, running, store.Provisioning, store.Running, store.Update{})
	done := mk(host, time.Minute)
	transition(t, s, done, store.Queued, store.Errored, store.Update{})
	others := mk(other, shortTTL)

	start := time.Now()
	n, err := s.Heartbeat(ctx, host, longTTL)
	if err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if n != 2 {
		t.Fatalf("Heartbeat extended %d leases, want 2", n)
	}
	for _, l := range []store.Lease{queued, running} {
		j := get(t, s, l.JobID)
		if j.LeaseExpiresAt.Before(start.Add(longTTL-time.Minute)) || j.Host != host || j.LeaseToken != l.Token {
			t.Errorf("job %s after Heartbeat: host %q token %d expires %v", l.JobID, j.Host, j.LeaseToken, j.LeaseExpiresAt)
		}
	}
	if j := get(t, s, done.JobID); j.Host != "" || !j.LeaseExpiresAt.IsZero() {
		t.Errorf("Heartbeat gave a terminal job a lease: %+v", j)
	}
	if j := get(t, s, others.JobID); j.LeaseExpiresAt.After(start.Add(time.Minute)) {
		t.Errorf("Heartbeat of %s extended the lease of %s's job", host, other)
	}

	// The other host's lease was not extended and expires.
	time.Sleep(afterShort)
	claim(t, s, others.JobID, host, longTTL)
	if _, err := s.Claim(ctx, running.JobID, other, longTTL); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Claim of a heartbeated job by another host: err = %v, want ErrConflict", err)
	}
	if n, err := s.Heartbeat(ctx, unique(t, "nobody"), longTTL); err != nil || n != 0 {
		t.Fatalf("Heartbeat of a host without jobs = %d, %v; want 0, nil", n, err)
	}
}

func testReserveSeq(t *testing.T, s store.Store) {
	ctx := t.Context()
	l, _ := newJob(t, s)
	id := l.JobID
	if _, err := s.ReserveSeq(ctx, unique(t, "missing"), 1); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ReserveSeq of a missing job: err = %v, want ErrNotFound", err)
	}
	var last int64
	for _, n := range []int{1, 1, 10, 3, 100} {
		first, err := s.ReserveSeq(ctx, id, n)
		if err != nil {
			t.Fatalf("ReserveSeq(%d): %v", n, err)
		}
		if first <= last {
			t.Fatalf("ReserveSeq(%d) = %d, want > %d (the end of the previous range)", n, first, last)
		}
		last = first + int64(n) - 1
		if j := get(t, s, id); j.EventSeq < last {
			t.Fatalf("EventSeq = %d after reserving up to %d", j.EventSeq, last)
		}
	}
	// Reserving does not need the lease and works in every state.
	transition(t, s, l, store.Queued, store.Cancelled, store.Update{})
	first, err := s.ReserveSeq(ctx, id, 5)
	if err != nil || first <= last {
		t.Fatalf("ReserveSeq on a cancelled job = %d, %v; want > %d", first, err, last)
	}
}

func testReserveSeqConcurrent(t *testing.T, s store.Store) {
	ctx := t.Context()
	id := unique(t, "job")
	insert(t, s, id, unique(t, "label"))
	const workers, rounds = 20, 5
	type rng struct{ first, n int64 }
	var (
		mu     sync.Mutex
		ranges []rng
		wg     sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				n := 1 + (w+r)%7
				first, err := s.ReserveSeq(ctx, id, n)
				if err != nil {
					t.Errorf("ReserveSeq: %v", err)
					return
				}
				mu.Lock()
				ranges = append(ranges, rng{first, int64(n)})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	slices.SortFunc(ranges, func(a, b rng) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	for i := 1; i < len(ranges); i++ {
		prev := ranges[i-1]
		if ranges[i].first < prev.first+prev.n {
			t.Fatalf("ranges overlap: [%d, %d) and [%d, %d)", prev.first, prev.first+prev.n,
				ranges[i].first, ranges[i].first+ranges[i].n)
		}
	}
	if ranges[0].first < 1 {
		t.Errorf("first sequence number %d, want ≥ 1", ranges[0].first)
	}
	end := ranges[len(ranges)-1].first + ranges[len(ranges)-1].n - 1
	if j := get(t, s, id); j.EventSeq < end {
		t.Errorf("EventSeq = %d, want ≥ %d", j.EventSeq, end)
	}
}

func testRequestCancel(t *testing.T, s store.Store) {
	ctx := t.Context()
	if _, err := s.RequestCancel(ctx, unique(t, "missing"), "why"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("RequestCancel of a missing job: err = %v, want ErrNotFound", err)
	}

	// Queued, never claimed: cancelled at once.
	id := unique(t, "queued")
	insert(t, s, id, unique(t, "label"))
	j, err := s.RequestCancel(ctx, id, "user pressed cancel")
	if err != nil {
		t.Fatalf("RequestCancel(queued): %v", err)
	}
	if j.State != store.Cancelled || !j.CancelRequested || j.CancelReason != "user pressed cancel" {
		t.Fatalf("RequestCancel(queued) returned %+v", j)
	}
	sameJob(t, "RequestCancel(queued) result vs stored", get(t, s, id), j)

	// Queued and claimed: cancelled at once, the lease released.
	lq, _ := newJob(t, s)
	j, err = s.RequestCancel(ctx, lq.JobID, "superseded")
	if err != nil {
		t.Fatalf("RequestCancel(claimed queued): %v", err)
	}
	if j.State != store.Cancelled || j.Host != "" || !j.LeaseExpiresAt.IsZero() {
		t.Fatalf("RequestCancel(claimed queued) returned %+v", j)
	}
	if err := s.Transition(ctx, lq, store.Queued, store.Provisioning, store.Update{}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Transition of a job cancelled while queued: err = %v, want ErrConflict", err)
	}

	// Running: keeps running with the flag set, until its host ends it.
	lr, _ := newJob(t, s)
	transition(t, s, lr, store.Queued, store.Provisioning, store.Update{})
	transition(t, s, lr, store.Provisioning, store.Running, store.Update{})
	j, err = s.RequestCancel(ctx, lr.JobID, "timeout")
	if err != nil {
		t.Fatalf("RequestCancel(running): %v", err)
	}
	if j.State != store.Running || !j.CancelRequested || j.CancelReason != "timeout" || j.Host != lr.Host || j.LeaseToken != lr.Token {
		t.Fatalf("RequestCancel(running) returned %+v", j)
	}
	sameJob(t, "RequestCancel(running) result vs stored", get(t, s, lr.JobID), j)
	// The lease still works.
	r, m := "cancelled", "cancelled: timeout"
	transition(t, s, lr, store.Running, store.Cancelled, store.Update{Result: &r, Message: &m})

	// Provisioning: same.
	lp, _ := newJob(t, s)
	transition(t, s, lp, store.Queued, store.Provisioning, store.Update{})
	j, err = s.RequestCancel(ctx, lp.JobID, "bye")
	if err != nil || j.State != store.Provisioning || !j.CancelRequested || j.CancelReason != "bye" {
		t.Fatalf("RequestCancel(provisioning) = %+v, %v", j, err)
	}

	// Terminal: unchanged.
	lt, _ := newJob(t, s)
	res, msg := "failure", "step 2 failed"
	transition(t, s, lt, store.Queued, store.Provisioning, store.Update{})
	transition(t, s, lt, store.Provisioning, store.Failed, store.Update{Result: &res, Message: &msg})
	before := get(t, s, lt.JobID)
	j, err = s.RequestCancel(ctx, lt.JobID, "too late")
	if err != nil {
		t.Fatalf("RequestCancel(terminal): %v", err)
	}
	sameJob(t, "RequestCancel(terminal) returned", j, before)
	sameJob(t, "RequestCancel(terminal) stored", get(t, s, lt.JobID), before)
}

func testReports(t *testing.T, s store.Store) {
	ctx := t.Context()
	prefix := unique(t, "forgejo") + "/"
	keys := map[string][]byte{
		prefix + "runner-1/1":  []byte(`{"task":1}`),
		prefix + "runner-1/2":  []byte(`{"task":2}`),
		prefix + "runner-2/10": {0, 1, 2, 0xff},
	}
	outside := prefix[:len(prefix)-1] + "x/runner-1/1" // shares all but the last byte
	for k, v := range keys {
		if err := s.PutReport(ctx, k, v); err != nil {
			t.Fatalf("PutReport(%s): %v", k, err)
		}
	}
	if err := s.PutReport(ctx, outside, []byte("outside")); err != nil {
		t.Fatalf("PutReport(%s): %v", outside, err)
	}

	if _, err := s.GetReport(ctx, prefix+"missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetReport of a missing key: err = %v, want ErrNotFound", err)
	}
	for k, v := range keys {
		got, err := s.GetReport(ctx, k)
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("GetReport(%s) = %q, %v; want %q", k, got, err, v)
		}
	}

	// Put replaces.
	k1 := prefix + "runner-1/1"
	keys[k1] = []byte(`{"task":1,"done":true}`)
	if err := s.PutReport(ctx, k1, keys[k1]); err != nil {
		t.Fatalf("PutReport replace: %v", err)
	}
	if got, err := s.GetReport(ctx, k1); err != nil || !bytes.Equal(got, keys[k1]) {
		t.Fatalf("GetReport after replace = %q, %v; want %q", got, err, keys[k1])
	}

	list := func(p string) map[string][]byte {
		t.Helper()
		m, err := s.ListReports(ctx, p)
		if err != nil {
			t.Fatalf("ListReports(%s): %v", p, err)
		}
		return m
	}
	eq := func(a, b []byte) bool { return bytes.Equal(a, b) }
	if got := list(prefix); !maps.EqualFunc(got, keys, eq) {
		t.Fatalf("ListReports(%s) = %q, want %q", prefix, got, keys)
	}
	sub := prefix + "runner-1/"
	want := map[string][]byte{prefix + "runner-1/1": keys[prefix+"runner-1/1"], prefix + "runner-1/2": keys[prefix+"runner-1/2"]}
	if got := list(sub); !maps.EqualFunc(got, want, eq) {
		t.Fatalf("ListReports(%s) = %q, want %q", sub, got, want)
	}
	if got := list(prefix + "nothing/"); len(got) != 0 {
		t.Fatalf("ListReports of an unused prefix = %q, want none", got)
	}
	// Prefix matching is literal: SQL wildcards match themselves only.
	if got := list(prefix + "runner-_/"); len(got) != 0 {
		t.Fatalf("ListReports(%s) = %q, want none (_ is no wildcard)", prefix+"runner-_/", got)
	}
	if got := list(prefix + "%"); len(got) != 0 {
		t.Fatalf("ListReports(%s) = %q, want none (%% is no wildcard)", prefix+"%", got)
	}

	if err := s.DeleteReport(ctx, k1); err != nil {
		t.Fatalf("DeleteReport: %v", err)
	}
	if _, err := s.GetReport(ctx, k1); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetReport after DeleteReport: err = %v, want ErrNotFound", err)
	}
	delete(keys, k1)
	if got := list(prefix); !maps.EqualFunc(got, keys, eq) {
		t.Fatalf("ListReports after delete = %q, want %q", got, keys)
	}
	if got, err := s.GetReport(ctx, outside); err != nil || string(got) != "outside" {
		t.Fatalf("GetReport(%s) = %q, %v", outside, got, err)
	}
	for _, k := range []string{outside, prefix + "runner-1/2", prefix + "runner-2/10"} {
		if err := s.DeleteReport(ctx, k); err != nil {
			t.Fatalf("DeleteReport(%s): %v", k, err)
		}
	}
	if got := list(prefix); len(got) != 0 {
		t.Fatalf("ListReports after deleting everything = %q", got)
	}
}
