// Package postgres is the PostgreSQL implementation of store.Store, on
// pgx v5 (pgxpool), for several hosts sharing one database.
//
// Every object the store creates carries the solstice_ prefix
// (solstice_jobs, solstice_reports, solstice_schema_migrations), so the
// store can live in a database shared with other software, in whatever
// schema the connection's search_path selects.
//
// Every guarded write names its guard in the WHERE clause (state = from AND
// lease_token = token AND host = host) and checks the rows affected, so a
// stale lease or state changes nothing and returns store.ErrConflict (or
// store.ErrNotFound when the job does not exist). Claim is a single
// UPDATE ... RETURNING: under READ COMMITTED, a Claim that waits for a
// concurrent one re-checks its WHERE clause against the row the other one
// committed, so exactly one of two racing hosts wins.
//
// Lease expiry uses the database clock (now()), so hosts whose clocks
// disagree still agree on who holds a lease. created_at and updated_at come
// from the database clock too.
//
// The schema is created and upgraded by the embedded migrations in
// migrations/, applied in one transaction that holds a transaction-level
// advisory lock, and recorded in solstice_schema_migrations; several hosts
// starting at once apply each migration exactly once.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/solstice-ci/solstice/internal/jobspec"
	"github.com/solstice-ci/solstice/internal/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the key of the advisory lock held while migrating:
// "solstice" in ASCII.
const migrationLock int64 = 0x736f6c7374696365

// terminalStates is the SQL list of the terminal states.
const terminalStates = `('succeeded', 'failed', 'cancelled', 'errored')`

// jobColumns are the columns scanJob reads, in order.
const jobColumns = `id, label, state, request, host, lease_token, lease_expires_at, vm, event_seq,
	cancel_requested, cancel_reason, result, message, created_at, updated_at`

// Store is a store.Store in a PostgreSQL database. Create it with Open.
type Store struct {
	pool *pgxpool.Pool
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at url (a postgres:// URL or a key=value
// connection string, see pgxpool.ParseConfig) and applies the migrations it
// lacks.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("opening postgres store: parsing the connection string: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening postgres store %s: %w", redact(cfg), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("opening postgres store %s: %w", redact(cfg), err)
	}
	s := &Store{pool: pool}
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("opening postgres store %s: %w", redact(cfg), err)
	}
	return s, nil
}

// redact names the database of cfg for error messages, without password.
func redact(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("%s@%s:%d/%s", c.User, c.Host, c.Port, c.Database)
}

// Close closes the connections; it waits for the ones in use to be
// returned.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// migrate applies the embedded migrations that solstice_schema_migrations
// does not list, all in one transaction under an advisory lock.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("listing migrations: %w", err)
	}
	slices.Sort(names)

	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrating: beginning transaction: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
		return fmt.Errorf("migrating: taking the advisory lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS solstice_schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
	)`); err != nil {
		return fmt.Errorf("creating solstice_schema_migrations: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT version FROM solstice_schema_migrations`)
	if err != nil {
		return fmt.Errorf("listing applied migrations: %w", err)
	}
	applied, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return fmt.Errorf("listing applied migrations: %w", err)
	}
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		version, err := strconv.Atoi(num)
		if !ok || err != nil || version <= 0 {
			return fmt.Errorf("migration %s: name does not start with a version number", base)
		}
		if slices.Contains(applied, int32(version)) {
			continue
		}
		script, err := migrations.ReadFile(name)
		if err != nil {
			return fmt.Errorf("reading migration %s: %w", base, err)
		}
		// Without arguments pgx uses the simple protocol, which runs
		// scripts of several statements.
		if _, err := tx.Exec(ctx, string(script)); err != nil {
			return fmt.Errorf("migration %s: %w", base, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO solstice_schema_migrations (version, name) VALUES ($1, $2)`,
			version, base); err != nil {
			return fmt.Errorf("migration %s: recording it: %w", base, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrating: committing: %w", err)
	}
	return nil
}

// micros is d in whole microseconds, the resolution of PostgreSQL
// timestamps; SQL turns it into an interval with $n * interval '1
// microsecond'.
func micros(d time.Duration) int64 { return d.Microseconds() }

// InsertJob stores a new queued job; an existing id is left as it is.
func (s *Store) InsertJob(ctx context.Context, id, label string, request []byte) (bool, error) {
	tag, err := s.pool.Exec(ctx, `INSERT INTO solstice_jobs (id, label, state, request)
		VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
		id, label, string(store.Queued), request)
	if err != nil {
		return false, fmt.Errorf("inserting job %s: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// GetJob returns job id or store.ErrNotFound.
func (s *Store) GetJob(ctx context.Context, id string) (store.Job, error) {
	j, err := scanJob(s.pool.QueryRow(ctx, `SELECT `+jobColumns+` FROM solstice_jobs WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
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
		states := make([]string, len(f.States))
		for i, st := range f.States {
			states[i] = string(st)
		}
		args = append(args, states)
		where = append(where, fmt.Sprintf("state = ANY($%d::text[])", len(args)))
	}
	if f.Host != "" {
		args = append(args, f.Host)
		where = append(where, fmt.Sprintf("host = $%d", len(args)))
	}
	if f.Label != "" {
		args = append(args, f.Label)
		where = append(where, fmt.Sprintf("label = $%d", len(args)))
	}
	q := `SELECT ` + jobColumns + ` FROM solstice_jobs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at, seq"
	rows, err := s.pool.Query(ctx, q, args...)
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
	var token int64
	err := s.pool.QueryRow(ctx, `UPDATE solstice_jobs
		SET host = $1, lease_token = lease_token + 1,
			lease_expires_at = now() + $2::bigint * interval '1 microsecond', updated_at = now()
		WHERE id = $3 AND state NOT IN `+terminalStates+`
			AND (host = '' OR host = $1 OR lease_expires_at IS NULL OR lease_expires_at <= now())
		RETURNING lease_token`,
		host, micros(ttl), id).Scan(&token)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Lease{}, fmt.Errorf("claiming job %s for %s: %w", id, host, s.missingOr(ctx, id, store.ErrConflict))
	}
	if err != nil {
		return store.Lease{}, fmt.Errorf("claiming job %s: %w", id, err)
	}
	return store.Lease{JobID: id, Host: host, Token: token}, nil
}

// missingOr returns store.ErrNotFound when job id does not exist and
// otherwise err, or the error of the lookup. Jobs are never deleted, so a
// job found missing after a guarded write changed nothing was missing then.
func (s *Store) missingOr(ctx context.Context, id string, err error) error {
	var one int
	switch lerr := s.pool.QueryRow(ctx, `SELECT 1 FROM solstice_jobs WHERE id = $1`, id).Scan(&one); {
	case errors.Is(lerr, pgx.ErrNoRows):
		return store.ErrNotFound
	case lerr != nil:
		return fmt.Errorf("looking the job up: %w", lerr)
	}
	return err
}

// checkGuarded turns a guarded write that changed no row into
// store.ErrConflict, or store.ErrNotFound when the job does not exist.
func (s *Store) checkGuarded(ctx context.Context, tag pgconn.CommandTag, id, what string) error {
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: %w", what, s.missingOr(ctx, id, store.ErrConflict))
	}
	return nil
}

// Transition moves the job from → to under lease l.
func (s *Store) Transition(ctx context.Context, l store.Lease, from, to store.State, u store.Update) error {
	if !store.CanTransition(from, to) {
		return fmt.Errorf("moving job %s from %s to %s: no such edge: %w", l.JobID, from, to, store.ErrConflict)
	}
	tag, err := s.pool.Exec(ctx, `UPDATE solstice_jobs SET
			state = $1,
			result = COALESCE($2::text, result),
			message = COALESCE($3::text, message),
			vm = CASE WHEN $4::boolean THEN $5::bytea ELSE vm END,
			host = CASE WHEN $6::boolean THEN '' ELSE host END,
			lease_expires_at = CASE WHEN $6::boolean THEN NULL ELSE lease_expires_at END,
			updated_at = now()
		WHERE id = $7 AND state = $8 AND lease_token = $9 AND host = $10`,
		string(to), u.Result, u.Message, u.VM != nil, u.VM, to.Terminal(),
		l.JobID, string(from), l.Token, l.Host)
	if err != nil {
		return fmt.Errorf("moving job %s from %s to %s: %w", l.JobID, from, to, err)
	}
	return s.checkGuarded(ctx, tag, l.JobID, fmt.Sprintf("moving job %s from %s to %s under token %d", l.JobID, from, to, l.Token))
}

// SetVM records the VM handle of a live job under lease l.
func (s *Store) SetVM(ctx context.Context, l store.Lease, vm []byte) error {
	tag, err := s.pool.Exec(ctx, `UPDATE solstice_jobs SET vm = $1, updated_at = now()
		WHERE id = $2 AND lease_token = $3 AND host = $4 AND state NOT IN `+terminalStates,
		vm, l.JobID, l.Token, l.Host)
	if err != nil {
		return fmt.Errorf("setting the VM of job %s: %w", l.JobID, err)
	}
	return s.checkGuarded(ctx, tag, l.JobID, fmt.Sprintf("setting the VM of job %s under token %d", l.JobID, l.Token))
}

// Heartbeat extends by ttl the leases host holds on jobs that are not
// terminal, expired or not (as long as nobody else claimed a job, its
// lease is still host's).
func (s *Store) Heartbeat(ctx context.Context, host string, ttl time.Duration) (int, error) {
	if host == "" {
		return 0, errors.New("heartbeat: empty host")
	}
	tag, err := s.pool.Exec(ctx, `UPDATE solstice_jobs
		SET lease_expires_at = now() + $1::bigint * interval '1 microsecond'
		WHERE host = $2 AND state NOT IN `+terminalStates,
		micros(ttl), host)
	if err != nil {
		return 0, fmt.Errorf("heartbeat of host %s: %w", host, err)
	}
	return int(tag.RowsAffected()), nil
}

// ReserveSeq reserves n event sequence numbers of job id and returns the
// first. The first number ever reserved is 1.
func (s *Store) ReserveSeq(ctx context.Context, id string, n int) (int64, error) {
	if n < 1 {
		return 0, fmt.Errorf("reserving %d sequence numbers of job %s: need at least 1", n, id)
	}
	var last int64
	err := s.pool.QueryRow(ctx, `UPDATE solstice_jobs SET event_seq = event_seq + $1 WHERE id = $2 RETURNING event_seq`,
		int64(n), id).Scan(&last)
	if errors.Is(err, pgx.ErrNoRows) {
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
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	j, err := scanJob(tx.QueryRow(ctx, `SELECT `+jobColumns+` FROM solstice_jobs WHERE id = $1 FOR UPDATE`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, err)
	}
	if j.State.Terminal() {
		return j, nil
	}
	var row pgx.Row
	if j.State == store.Queued {
		row = tx.QueryRow(ctx, `UPDATE solstice_jobs SET state = $1, result = $2, message = $3,
				cancel_requested = true, cancel_reason = $3, host = '', lease_expires_at = NULL, updated_at = now()
			WHERE id = $4
			RETURNING `+jobColumns,
			string(store.Cancelled), jobspec.ResultCancelled, reason, id)
	} else {
		row = tx.QueryRow(ctx, `UPDATE solstice_jobs SET cancel_requested = true,
				cancel_reason = CASE WHEN cancel_requested THEN cancel_reason ELSE $1 END, updated_at = now()
			WHERE id = $2
			RETURNING `+jobColumns,
			reason, id)
	}
	if j, err = scanJob(row); err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: %w", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return store.Job{}, fmt.Errorf("cancelling job %s: committing: %w", id, err)
	}
	return j, nil
}

// PutReport stores value under key, replacing any earlier value.
func (s *Store) PutReport(ctx context.Context, key string, value []byte) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO solstice_reports (key, value) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()`,
		key, value)
	if err != nil {
		return fmt.Errorf("storing report %s: %w", key, err)
	}
	return nil
}

// GetReport returns the value stored under key or store.ErrNotFound.
func (s *Store) GetReport(ctx context.Context, key string) ([]byte, error) {
	var v []byte
	err := s.pool.QueryRow(ctx, `SELECT value FROM solstice_reports WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("getting report %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("getting report %s: %w", key, err)
	}
	return v, nil
}

// ListReports returns the reports whose key starts with prefix. The match
// is literal (no LIKE), and the range condition lets it use the primary
// key, which collates bytewise.
func (s *Store) ListReports(ctx context.Context, prefix string) (map[string][]byte, error) {
	rows, err := s.pool.Query(ctx, `SELECT key, value FROM solstice_reports
		WHERE key >= $1 AND starts_with(key, $1)`, prefix)
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
	if _, err := s.pool.Exec(ctx, `DELETE FROM solstice_reports WHERE key = $1`, key); err != nil {
		return fmt.Errorf("deleting report %s: %w", key, err)
	}
	return nil
}

// scanJob reads the jobColumns of one row.
func scanJob(r pgx.Row) (store.Job, error) {
	var (
		j        store.Job
		state    string
		leaseExp *time.Time
	)
	if err := r.Scan(&j.ID, &j.Label, &state, &j.Request, &j.Host, &j.LeaseToken, &leaseExp, &j.VM, &j.EventSeq,
		&j.CancelRequested, &j.CancelReason, &j.Result, &j.Message, &j.CreatedAt, &j.UpdatedAt); err != nil {
		return store.Job{}, err
	}
	j.State = store.State(state)
	if leaseExp != nil {
		j.LeaseExpiresAt = *leaseExp
	}
	return j, nil
}
