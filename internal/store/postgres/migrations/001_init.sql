-- Jobs and their leases. Every object carries the solstice_ prefix, so the
-- store can share a database (and its public schema) with other software.
-- Timestamps come from the database clock; lease_expires_at is NULL when
-- the job has no lease.
CREATE TABLE solstice_jobs (
	id               TEXT PRIMARY KEY,
	-- seq orders jobs created within the same microsecond.
	seq              BIGINT GENERATED ALWAYS AS IDENTITY,
	label            TEXT NOT NULL,
	state            TEXT NOT NULL CHECK (state IN ('queued', 'provisioning', 'running', 'succeeded', 'failed', 'cancelled', 'errored')),
	request          BYTEA,
	host             TEXT NOT NULL DEFAULT '',
	lease_token      BIGINT NOT NULL DEFAULT 0,
	lease_expires_at TIMESTAMPTZ,
	vm               BYTEA,
	event_seq        BIGINT NOT NULL DEFAULT 0,
	cancel_requested BOOLEAN NOT NULL DEFAULT false,
	cancel_reason    TEXT NOT NULL DEFAULT '',
	result           TEXT NOT NULL DEFAULT '',
	message          TEXT NOT NULL DEFAULT '',
	created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
	updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX solstice_jobs_state_created ON solstice_jobs (state, created_at, seq);
CREATE INDEX solstice_jobs_label_created ON solstice_jobs (label, created_at, seq);
CREATE INDEX solstice_jobs_created ON solstice_jobs (created_at, seq);
CREATE INDEX solstice_jobs_host ON solstice_jobs (host) WHERE host <> '';

-- Reporting state of the platform daemons. The key collates bytewise, so
-- prefix scans are plain range scans of the primary key.
CREATE TABLE solstice_reports (
	key        TEXT COLLATE "C" PRIMARY KEY,
	value      BYTEA,
	updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
