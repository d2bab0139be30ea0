// Package sqlite is the embedded implementation of store.Store, on
// modernc.org/sqlite (pure Go, no cgo).
//
// The database runs in WAL mode with a busy timeout and foreign keys on,
// and synchronous=NORMAL: a commit is in the WAL (in the OS) when it
// returns, so it survives a crash of the process (kill -9), but a power
// loss or an OS crash may roll back the last commits (the database stays
// consistent). The embedded setup keeps its queue in process memory, so a
// power loss loses queued work anyway; a full fsync per commit (FULL) cost
// two thirds of the accept rate for no guarantee the setup could keep.
// Writes go through one connection whose transactions begin IMMEDIATE (they
// take the write lock at BEGIN, so a read-then-write transaction never fails
// half way with SQLITE_BUSY); reads use a pool of read-only connections.
// Several processes may open the same file; they wait for each other's
// write locks up to the busy timeout.
//
// Every guarded write names its guard in the WHERE clause (state = from AND
// lease_token = token AND host = host) and checks RowsAffected, so a stale
// lease or state changes nothing and returns store.ErrConflict.
//
// Timestamps are stored as unix nanoseconds, 0 meaning none. The schema is
// created and upgraded by the embedded migrations in migrations/, recorded
// in the schema_migrations table.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// busyTimeout is how long a connection waits for another connection's (or
// process's) lock before failing with SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// maxReaders is the size of the read connection pool.
const maxReaders = 8

// terminalStates is the SQL list of the terminal states.
const terminalStates = `('succeeded', 'failed', 'cancelled', 'errored')`

// jobColumns are the columns scanJob reads, in order.
const jobColumns = `id, label, state, request, host, lease_token, lease_expires_at, vm, event_seq,
	cancel_requested, cancel_reason, result, message, created_at, updated_at`

// Store is a store.Store in one SQLite database file. Create it with Open.
type Store struct {
	w *sql.DB // the one write connection, transactions BEGIN IMMEDIATE
	r *sql.DB // read-only connections
	// ws and rs are the prepared statements of w and r.
	ws, rs *stmts
	now    func() time.Time
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the database file at path and applies the
// migrations it lacks. path must name a file: ":memory:" and paths with a
// '?' are refused.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") || strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("opening sqlite store: unsupported path %q (need a plain file path)", path)
	}
	ms := strconv.FormatInt(busyTimeout.Milliseconds(), 10)

	wq := url.Values{}
	wq.Add("_txlock", "immediate")
	wq.Add("_pragma", "busy_timeout("+ms+")")
	wq.Add("_pragma", "journal_mode(WAL)")
	wq.Add("_pragma", "synchronous(NORMAL)")
	wq.Add("_pragma", "foreign_keys(1)")
	w, err := sql.Open("sqlite", path+"?"+wq.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening sqlite store %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)
	// Connect now, so the file exists and is in WAL mode before any reader
	// opens it.
	if err := w.PingContext(ctx); err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("opening sqlite store %s: %w", path, err)
	}

	rq := url.Values{}
	rq.Add("_pragma", "busy_timeout("+ms+")")
	rq.Add("_pragma", "foreign_keys(1)")
	rq.Add("_pragma", "query_only(1)")
	r, err := sql.Open("sqlite", path+"?"+rq.Encode())
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("opening sqlite store %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(maxReaders)
	r.SetMaxIdleConns(maxReaders)

	s := &Store{w: w, r: r, ws: newStmts(w), rs: newStmts(r), now: time.Now}
	if err := s.migrate(ctx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("opening sqlite store %s: %w", path, err)
	}
	if err := s.ws.warm(ctx, claimQuery); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("opening sqlite store %s: preparing statements: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	return errors.Join(s.rs.Close(), s.ws.Close(), s.r.Close(), s.w.Close())
}

// migrate applies the embedded migrations that schema_migrations does not
// list, each in its own transaction.
func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		return fmt.Errorf("creating schema_migrations: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("listing migrations: %w", err)
	}
	slices.Sort(names)
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil || version <= 0 {
			return fmt.Errorf("migration %s: name does not start with a version number", base)
		}
		script, err := migrations.ReadFile(name)
		if err != nil {
			return fmt.Errorf("reading migration %s: %w", base, err)
		}
		if err := s.applyMigration(ctx, version, base, string(script)); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) applyMigration(ctx context.Context, version int, name, script string) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %s: beginning transaction: %w", name, err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
		return fmt.Errorf("migration %s: checking whether it was applied: %w", name, err)
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, script); err != nil {
		return fmt.Errorf("migration %s: %w", name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		version, name, s.now().UnixNano()); err != nil {
		return fmt.Errorf("migration %s: recording it: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %s: committing: %w", name, err)
	}
	return nil
}

// InsertJob stores a new queued job; an existing id is left as it is.
func (s *Store) InsertJob(ctx context.Context, id, label string, request []byte) (bool, error) {
	now := s.now().UnixNano()
	res, err := s.ws.ExecContext(ctx, `INSERT INTO jobs (id, label, state, request, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		id, label, string(store.Queued), request, now, now)
	if err != nil {
		return false, fmt.Errorf("inserting job %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("inserting job %s: %w", id, err)
	}
	return n == 1, nil
}

// GetJob returns job id or store.ErrNotFound.
func (s *Store) GetJob(ctx context.Context, id string) (store.Job, error) {
	j, err := scanJob(s.rs.QueryRowContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Job{}, fmt.Errorf("getting job %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Job{}, fmt.Errorf("getting job %s: %w", id, err)
	}
	return j, nil
}

// ListJobs returns the jobs that match f, oldest first.
func (s *Store) ListJobs(ctx context.Context, f store.Filter) ([]store.Job, error) {
	var where []string
	var args []any
	if len(f.States) > 0 {
		ph := make([]string, len(f.States))
		for i, st := range f.States {
			ph[i] = "?"
			args = append(args, string(st))
		}
		where = append(where, "state IN ("+strings.Join(ph, ", ")+")")
	}
	if f.Host != "" {
		where = append(where, "host = ?")
		args = append(args, f.Host)
	}
	if f.Label != "" {
		where = append(where, "label = ?")
		args = append(args, f.Label)
	}
	q := `SELECT ` + jobColumns + ` FROM jobs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at, rowid"
	rows, err := s.rs.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	defer rows.Close()
	var jobs []store.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("listing jobs: %w", err)
		}
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	return jobs, nil
}

// Claim gives host the lease of job id for ttl, with a new token.
func (s *Store) Claim(ctx context.Context, id, host string, ttl time.Duration) (store.Lease, error) {
	if host == "" {
		return store.Lease{}, fmt.Errorf("claiming job %s: empty host", id)
	}
	now := s.now()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Lease{}, fmt.Errorf("claiming job %s: %w", id, err)
	}
	defer tx.Rollback()
	var token int64
	err = s.ws.in(tx).QueryRowContext(ctx, claimQuery,
		host, now.Add(ttl).UnixNano(), now.UnixNano(), id).Scan(&token)
	if errors.Is(err, sql.ErrNoRows) {
		return store.Lease{}, fmt.Errorf("claiming job %s for %s: %w", id, host, missingOr(ctx, tx, id, store.ErrConflict))
	}
	if err != nil {
		return store.Lease{}, fmt.Errorf("claiming job %s: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return store.Lease{}, fmt.Errorf("claiming job %s: committing: %w", id, err)
	}
	return store.Lease{JobID: id, Host: host, Token: token}, nil
}

// claimQuery takes the lease of a job (in Claim's transaction).
const claimQuery = `UPDATE jobs
		SET host = ?1, lease_token = lease_token + 1, lease_expires_at = ?2, updated_at = ?3
		WHERE id = ?4 AND state NOT IN ` + terminalStates + `
			AND (host = '' OR host = ?1 OR lease_expires_at <= ?3)
		RETURNING lease_token`

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// missingOr returns store.ErrNotFound when job id does not exist and
// otherwise err, or the error of the lookup.
func missingOr(ctx context.Context, q querier, id string, err error) error {
	var one int
	switch lerr := q.QueryRowContext(ctx, `SELECT 1 FROM jobs WHERE id = ?`, id).Scan(&one); {
	case errors.Is(lerr, sql.ErrNoRows):
		return store.ErrNotFound
	case lerr != nil:
		return fmt.Errorf("looking the job up: %w", lerr)
	}
	return err
}

// Transition moves the job from → to under lease l.
func (s *Store) Transition(ctx context.Context, l store.Lease, from, to store.State, u store.Update) error {
	if !store.CanTransition(from, to) {
		return fmt.Errorf("moving job %s from %s to %s: no such edge: %w", l.JobID, from, to, store.ErrConflict)
	}
	var result, message any
	if u.Result != nil {
		result = *u.Result
	}
	if u.Message != nil {
		message = *u.Message
	}
	res, err := s.ws.ExecContext(ctx, `UPDATE jobs SET
			state = ?1,
			result = COALESCE(?2, result),
			message = COALESCE(?3, message),
			vm = CASE WHEN ?4 THEN ?5 ELSE vm END,
			host = CASE WHEN ?6 THEN '' ELSE host END,
			lease_expires_at = CASE WHEN ?6 THEN 0 ELSE lease_expires_at END,
			updated_at = ?7
		WHERE id = ?8 AND state = ?9 AND lease_token = ?10 AND host = ?11`,
		string(to), result, message, u.VM != nil, u.VM, to.Terminal(), s.now().UnixNano(),
		l.JobID, string(from), l.Token, l.Host)
	if err != nil {
		return fmt.Errorf("moving job %s from %s to %s: %w", l.JobID, from, to, err)
	}
	return s.checkGuarded(ctx, res, l.JobID, fmt.Sprintf("moving job %s from %s to %s under token %d", l.JobID, from, to, l.Token))
}

// checkGuarded turns a guarded write that changed no row into
// store.ErrConflict, or store.ErrNotFound when the job does not exist.
func (s *Store) checkGuarded(ctx context.Context, res sql.Result, id, what string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, missingOr(ctx, s.w, id, store.ErrConflict))
	}
	return nil
}

// SetVM records the VM handle of a live job under lease l.
func (s *Store) SetVM(ctx context.Context, l store.Lease, vm []byte) error {
	res, err := s.ws.ExecContext(ctx, `UPDATE jobs SET vm = ?, updated_at = ?
		WHERE id = ? AND lease_token = ? AND host = ? AND state NOT IN `+terminalStates,
		vm, s.now().UnixNano(), l.JobID, l.Token, l.Host)
	if err != nil {
		return fmt.Errorf("setting the VM of job %s: %w", l.JobID, err)
	}
	return s.checkGuarded(ctx, res, l.JobID, fmt.Sprintf("setting the VM of job %s under token %d", l.JobID, l.Token))
}

// Heartbeat extends by ttl the leases host holds on jobs that are not
// terminal, expired or not (as long as nobody else claimed a job, its
// lease is still host's).
func (s *Store) Heartbeat(ctx context.Context, host string, ttl time.Duration) (int, error) {
	if host == "" {
		return 0, errors.New("heartbeat: empty host")
	}
	res, err := s.ws.ExecContext(ctx, `UPDATE jobs SET lease_expires_at = ?
		WHERE host = ? AND state NOT IN `+terminalStates,
		s.now().Add(ttl).UnixNano(), host)
	if err != nil {
		return 0, fmt.Errorf("heartbeat of host %s: %w", host, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("heartbeat of host %s: %w", host, err)
	}
	return int(n), nil
}

// ReserveSeq reserves n event sequence numbers of job id and returns the
// first. The first number ever reserved is 1.
func (s *Store) ReserveSeq(ctx context.Context, id string, n int) (int64, error) {
	if n < 1 {
		return 0, fmt.Errorf("reserving %d sequence numbers of job %s: need at least 1", n, id)
	}
	var last int64
	err := s.ws.QueryRowContext(ctx, `UPDATE jobs SET event_seq = event_seq + ? WHERE id = ? RETURNING event_seq`,
		n, id).Scan(&last)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("reserving sequence numbers of job %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("reserving sequence numbers of job %s: %w", id, err)
	}
	return last - int64(n) + 1, nil
}

// RequestCancel marks job id for cancellation. A queued job becomes
// cancelled at once, with result jobspec.ResultCancelled and reason as its
// message, and loses its lease. The first reason given is kept.
func (s *Store) RequestCancel(ctx context.Context, id, reason string) (store.Job, error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, err)
	}
	defer tx.Rollback()
	get := func() (store.Job, error) {
		return scanJob(s.ws.in(tx).QueryRowContext(ctx, `SELECT `+jobColumns+` FROM jobs WHERE id = ?`, id))
	}
	j, err := get()
	if errors.Is(err, sql.ErrNoRows) {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, err)
	}
	if j.State.Terminal() {
		return j, nil
	}
	now := s.now().UnixNano()
	if j.State == store.Queued {
		_, err = s.ws.in(tx).ExecContext(ctx, `UPDATE jobs SET state = ?, result = ?, message = ?,
				cancel_requested = 1, cancel_reason = ?, host = '', lease_expires_at = 0, updated_at = ?
			WHERE id = ? AND state = ?`,
			string(store.Cancelled), jobspec.ResultCancelled, reason, reason, now, id, string(store.Queued))
	} else {
		_, err = s.ws.in(tx).ExecContext(ctx, `UPDATE jobs SET cancel_requested = 1,
				cancel_reason = CASE WHEN cancel_requested THEN cancel_reason ELSE ? END, updated_at = ?
			WHERE id = ?`,
			reason, now, id)
	}
	if err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, err)
	}
	if j, err = get(); err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: reading it back: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: committing: %w", id, err)
	}
	return j, nil
}

// PutReport stores value under key, replacing any earlier value.
func (s *Store) PutReport(ctx context.Context, key string, value []byte) error {
	_, err := s.ws.ExecContext(ctx, `INSERT INTO reports (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		key, value, s.now().UnixNano())
	if err != nil {
		return fmt.Errorf("storing report %s: %w", key, err)
	}
	return nil
}

// GetReport returns the value stored under key or store.ErrNotFound.
func (s *Store) GetReport(ctx context.Context, key string) ([]byte, error) {
	var v []byte
	err := s.rs.QueryRowContext(ctx, `SELECT value FROM reports WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("getting report %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("getting report %s: %w", key, err)
	}
	return v, nil
}

// ListReports returns the reports whose key starts with prefix.
func (s *Store) ListReports(ctx context.Context, prefix string) (map[string][]byte, error) {
	rows, err := s.rs.QueryContext(ctx, `SELECT key, value FROM reports
		WHERE key >= ?1 AND substr(key, 1, length(?1)) = ?1`, prefix)
	if err != nil {
		return nil, fmt.Errorf("listing reports %q: %w", prefix, err)
	}
	defer rows.Close()
	out := make(map[string][]byte)
	for rows.Next() {
		var k string
		var v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return nil, fmt.Errorf("listing reports %q: %w", prefix, err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing reports %q: %w", prefix, err)
	}
	return out, nil
}

// DeleteReport removes the report under key; removing an absent key is no
// error.
func (s *Store) DeleteReport(ctx context.Context, key string) error {
	if _, err := s.ws.ExecContext(ctx, `DELETE FROM reports WHERE key = ?`, key); err != nil {
		return fmt.Errorf("deleting report %s: %w", key, err)
	}
	return nil
}

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface {
	Scan(dest ...any) error
}

// scanJob reads the jobColumns of one row.
func scanJob(r scanner) (store.Job, error) {
	var (
		j                          store.Job
		state                      string
		leaseExp, created, updated int64
		cancel                     bool
	)
	if err := r.Scan(&j.ID, &j.Label, &state, &j.Request, &j.Host, &j.LeaseToken, &leaseExp, &j.VM, &j.EventSeq,
		&cancel, &j.CancelReason, &j.Result, &j.Message, &created, &updated); err != nil {
		return store.Job{}, err
	}
	j.State = store.State(state)
	j.CancelRequested = cancel
	j.LeaseExpiresAt = fromNanos(leaseExp)
	j.CreatedAt = fromNanos(created)
	j.UpdatedAt = fromNanos(updated)
	return j, nil
}

// fromNanos is the inverse of UnixNano, with 0 meaning the zero time.
func fromNanos(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
