-- Jobs and their leases. Timestamps are unix nanoseconds; 0 means none.
CREATE TABLE jobs (
	id               TEXT PRIMARY KEY,
	label            TEXT NOT NULL,
	state            TEXT NOT NULL CHECK (state IN ('queued', 'provisioning', 'running', 'succeeded', 'failed', 'cancelled', 'errored')),
	request          BLOB,
	host             TEXT NOT NULL DEFAULT '',
	lease_token      INTEGER NOT NULL DEFAULT 0,
	lease_expires_at INTEGER NOT NULL DEFAULT 0,
	vm               BLOB,
	event_seq        INTEGER NOT NULL DEFAULT 0,
	cancel_requested INTEGER NOT NULL DEFAULT 0,
	cancel_reason    TEXT NOT NULL DEFAULT '',
	result           TEXT NOT NULL DEFAULT '',
	message          TEXT NOT NULL DEFAULT '',
	created_at       INTEGER NOT NULL,
	updated_at       INTEGER NOT NULL
);

CREATE INDEX jobs_state_created ON jobs (state, created_at);
CREATE INDEX jobs_label_created ON jobs (label, created_at);
CREATE INDEX jobs_host ON jobs (host) WHERE host <> '';

-- Reporting state of the platform daemons.
CREATE TABLE reports (
	key        TEXT PRIMARY KEY,
	value      BLOB,
	updated_at INTEGER NOT NULL
);
