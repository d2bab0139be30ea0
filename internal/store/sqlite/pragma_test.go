package sqlite

import (
	"database/sql"
	"path/filepath"
	"testing"
)

// TestPragmas checks that the DSN settings reach both connection pools.
func TestPragmas(t *testing.T) {
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, db := range map[string]*sql.DB{"write": s.w, "read": s.r} {
		var mode string
		var busy, fk int
		if err := db.QueryRowContext(t.Context(), `PRAGMA journal_mode`).Scan(&mode); err != nil {
			t.Fatalf("%s: journal_mode: %v", name, err)
		}
		if err := db.QueryRowContext(t.Context(), `PRAGMA busy_timeout`).Scan(&busy); err != nil {
			t.Fatalf("%s: busy_timeout: %v", name, err)
		}
		if err := db.QueryRowContext(t.Context(), `PRAGMA foreign_keys`).Scan(&fk); err != nil {
			t.Fatalf("%s: foreign_keys: %v", name, err)
		}
		if mode != "wal" || busy != int(busyTimeout.Milliseconds()) || fk != 1 {
			t.Errorf("%s: journal_mode %q busy_timeout %d foreign_keys %d; want wal %d 1", name, mode, busy, fk, busyTimeout.Milliseconds())
		}
	}
	var n int
	if err := s.r.QueryRowContext(t.Context(), `SELECT count(*) FROM schema_migrations`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("schema_migrations rows = %d, %v; want 1", n, err)
	}
	if _, err := s.r.ExecContext(t.Context(), `DELETE FROM reports`); err == nil {
		t.Error("the read pool accepted a write")
	}
}
