package sqlite

import (
	"context"
	"database/sql"
	"sync"
)

// maxStmts bounds the statement cache; query texts past it (ListJobs makes
// one per filter shape) run unprepared.
const maxStmts = 64

// stmts prepares each query text once per database and reuses the
// statement: modernc.org/sqlite parses every query text it is given, and
// parsing was a quarter of the CPU of accepting a job.
type stmts struct {
	db *sql.DB
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

func newStmts(db *sql.DB) *stmts { return &stmts{db: db, m: map[string]*sql.Stmt{}} }

// get returns the prepared statement of q, or nil when the cache is full.
// The mutex is not held while preparing: that may wait for the write
// connection, which a transaction using lookup may hold.
func (c *stmts) get(ctx context.Context, q string) (*sql.Stmt, error) {
	c.mu.Lock()
	st, ok := c.m[q]
	full := len(c.m) >= maxStmts
	c.mu.Unlock()
	if ok || full {
		return st, nil
	}
	st, err := c.db.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[q]; ok { // prepared meanwhile by another caller
		_ = st.Close()
		return old, nil
	}
	c.m[q] = st
	return st, nil
}

func (c *stmts) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	st, err := c.get(ctx, q)
	if err != nil || st == nil {
		return c.db.ExecContext(ctx, q, args...)
	}
	return st.ExecContext(ctx, args...)
}

func (c *stmts) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := c.get(ctx, q)
	if err != nil || st == nil {
		return c.db.QueryContext(ctx, q, args...)
	}
	return st.QueryContext(ctx, args...)
}

// QueryRowContext runs q unprepared when it cannot be prepared, so the
// error reaches the caller through Scan.
func (c *stmts) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	st, err := c.get(ctx, q)
	if err != nil || st == nil {
		return c.db.QueryRowContext(ctx, q, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// lookup returns the prepared statement of q if there is one. It never
// prepares: the write database has one connection, which a transaction
// holds, so preparing on the database from inside a transaction would wait
// for ever. Statements used in transactions are prepared by warm at Open.
func (c *stmts) lookup(q string) *sql.Stmt {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[q]
}

// warm prepares the statements of qs now, outside any transaction.
func (c *stmts) warm(ctx context.Context, qs ...string) error {
	for _, q := range qs {
		if _, err := c.get(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// in runs the cached statements inside tx; queries not prepared by warm run
// unprepared.
func (c *stmts) in(tx *sql.Tx) txStmts { return txStmts{c: c, tx: tx} }

func (c *stmts) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.m {
		_ = st.Close()
		delete(c.m, q)
	}
	return nil
}

// txStmts are the cached statements bound to one transaction.
type txStmts struct {
	c  *stmts
	tx *sql.Tx
}

func (t txStmts) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	st := t.c.lookup(q)
	if st == nil {
		return t.tx.ExecContext(ctx, q, args...)
	}
	return t.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
}

func (t txStmts) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	st := t.c.lookup(q)
	if st == nil {
		return t.tx.QueryRowContext(ctx, q, args...)
	}
	return t.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
}
