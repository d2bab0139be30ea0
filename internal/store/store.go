// Package store keeps the state of jobs: a state machine per job, the lease
// of the host that runs it (with a fencing token), the handle of its VM, its
// event sequence, and the reporting state of the platform daemons.
//
// Two implementations satisfy Store: PostgreSQL (pgx v5, for many hosts) and
// SQLite (modernc.org/sqlite, embedded). One contract test suite
// (storetest) runs against both.
//
// State machine (every edge is guarded in SQL):
//
//	queued ──► provisioning ──► running ──► succeeded | failed | cancelled | errored
//	   │             │                      ▲
//	   └─────────────┴──────────────────────┘ (cancelled or errored from any live state)
package store

import (
	"context"
	"errors"
	"time"
)

// State is the state of a job.
type State string

// Job states.
const (
	Queued       State = "queued"
	Provisioning State = "provisioning"
	Running      State = "running"
	Succeeded    State = "succeeded"
	Failed       State = "failed"
	Cancelled    State = "cancelled"
	Errored      State = "errored"
)

// Terminal reports whether no transition leaves s.
func (s State) Terminal() bool {
	switch s {
	case Succeeded, Failed, Cancelled, Errored:
		return true
	}
	return false
}

// Valid reports whether s is one of the states above.
func (s State) Valid() bool {
	switch s {
	case Queued, Provisioning, Running, Succeeded, Failed, Cancelled, Errored:
		return true
	}
	return false
}

// CanTransition reports whether from → to is an edge of the state machine.
func CanTransition(from, to State) bool {
	switch from {
	case Queued:
		return to == Provisioning || to == Cancelled || to == Errored
	case Provisioning:
		return to == Running || to == Cancelled || to == Errored || to == Failed
	case Running:
		return to.Terminal()
	}
	return false
}

// Errors of the store.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict means a guarded write changed nothing: the job is not in
	// the expected state, or the lease token is stale (another host took
	// the job over), or the lease is held by another live host.
	ErrConflict = errors.New("conflict: state or lease changed")
)

// Job is a stored job.
type Job struct {
	ID      string
	Label   string
	State   State
	Request []byte // the JobRequest JSON (its secrets stay sealed)

	Host           string    // host holding the lease, "" when none
	LeaseToken     int64     // fencing token, incremented by every Claim
	LeaseExpiresAt time.Time // zero when no lease

	VM       []byte // the VM handle (JSON of package vm), nil before one exists
	EventSeq int64  // highest event sequence number reserved so far

	CancelRequested bool
	CancelReason    string

	Result  string // final result (jobspec.Result*), set with a terminal state
	Message string // why it ended, for errored and cancelled jobs

	CreatedAt time.Time
	UpdatedAt time.Time
}

// Lease is the right of one host to change one job. Every write under a
// lease is guarded by its token.
type Lease struct {
	JobID string
	Host  string
	Token int64
}

// Filter selects jobs for ListJobs. Zero fields select everything.
type Filter struct {
	States []State
	Host   string
	Label  string
}

// Update carries the fields a transition sets besides the state. Nil fields
// are left as they are.
type Update struct {
	Result  *string
	Message *string
	VM      []byte
}

// Store is the job state store. All methods are safe for concurrent use
// from many goroutines and, for PostgreSQL, many hosts. ctx cancellation
// aborts the call; a write either happened completely or not at all.
type Store interface {
	// InsertJob stores a new job in state queued. Inserting an id that
	// exists changes nothing and returns inserted=false, nil: the job id
	// is the idempotency key of redelivered messages.
	InsertJob(ctx context.Context, id, label string, request []byte) (inserted bool, err error)

	// GetJob returns one job or ErrNotFound.
	GetJob(ctx context.Context, id string) (Job, error)

	// ListJobs returns the jobs that match f, oldest first.
	ListJobs(ctx context.Context, f Filter) ([]Job, error)

	// Claim gives host the lease of job id for ttl and returns it with a
	// new, higher token. It succeeds when the job is not terminal and
	// either has no lease, its lease expired, or host already holds it
	// (a restarted orchestrator reclaiming its own jobs). Otherwise it
	// returns ErrConflict. The state does not change.
	Claim(ctx context.Context, id, host string, ttl time.Duration) (Lease, error)

	// Transition moves the job from → to under lease l, with the fields of
	// u. It returns ErrConflict when the job is not in state from, the
	// lease token is not l.Token, or from → to is no edge. A terminal
	// state releases the lease.
	Transition(ctx context.Context, l Lease, from, to State, u Update) error

	// SetVM records the VM handle of the job under lease l.
	SetVM(ctx context.Context, l Lease, vm []byte) error

	// Heartbeat extends by ttl the leases of all live jobs host holds and
	// returns how many it extended.
	Heartbeat(ctx context.Context, host string, ttl time.Duration) (int, error)

	// ReserveSeq reserves n event sequence numbers of job id and returns
	// the first; numbers are increasing per job and never reused, even
	// across restarts (they may have gaps).
	ReserveSeq(ctx context.Context, id string, n int) (first int64, err error)

	// RequestCancel marks the job for cancellation with reason. A queued
	// job becomes cancelled at once (returned with its new state); a live
	// one keeps running until its host sees the flag or the Cancel
	// message. Terminal jobs are returned unchanged. ErrNotFound if absent.
	RequestCancel(ctx context.Context, id, reason string) (Job, error)

	// PutReport stores the reporting state of a platform daemon under key
	// (for example "forgejo/<runner uuid>/<task id>"), replacing any
	// earlier value. GetReport returns ErrNotFound when absent.
	PutReport(ctx context.Context, key string, value []byte) error
	GetReport(ctx context.Context, key string) ([]byte, error)
	// ListReports returns the keys and values whose key starts with prefix.
	ListReports(ctx context.Context, prefix string) (map[string][]byte, error)
	DeleteReport(ctx context.Context, key string) error

	// Close releases the connections.
	Close() error
}
