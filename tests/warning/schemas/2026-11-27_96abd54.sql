-- The floodwarn database schema made by warning/storage.py as shipped in 96abd54 (2026-11-27):
-- Base.metadata.create_all on an empty SQLite file (git show <commit>:warning/storage.py),
-- dumped from sqlite_master. Tests build an old database from it and upgrade it.

CREATE TABLE alerts (
	id INTEGER NOT NULL, 
	identifier VARCHAR(200) NOT NULL, 
	zone VARCHAR(64) NOT NULL, 
	scope VARCHAR(80) NOT NULL, 
	run_id VARCHAR(64) NOT NULL, 
	level INTEGER NOT NULL, 
	level_name VARCHAR(40) NOT NULL, 
	msg_type VARCHAR(10) NOT NULL, 
	status VARCHAR(10) NOT NULL, 
	sent DATETIME NOT NULL, 
	expires DATETIME NOT NULL, 
	cap_path TEXT NOT NULL, 
	headline TEXT NOT NULL, 
	state VARCHAR(12) NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (identifier), 
	FOREIGN KEY(run_id) REFERENCES runs (id)
);

CREATE TABLE approvals (
	id INTEGER NOT NULL, 
	alert_identifier VARCHAR(200) NOT NULL, 
	zone VARCHAR(64) NOT NULL, 
	scope VARCHAR(80) NOT NULL, 
	level_name VARCHAR(40) NOT NULL, 
	requested_at DATETIME NOT NULL, 
	release_at DATETIME, 
	state VARCHAR(12) NOT NULL, 
	decided_by VARCHAR(120), 
	decided_at DATETIME, 
	edited_text TEXT, 
	note TEXT, 
	PRIMARY KEY (id), 
	UNIQUE (alert_identifier), 
	FOREIGN KEY(alert_identifier) REFERENCES alerts (identifier)
);

CREATE TABLE audit (
	id INTEGER NOT NULL, 
	time DATETIME NOT NULL, 
	run_id VARCHAR(64), 
	zone VARCHAR(64), 
	event VARCHAR(40) NOT NULL, 
	detail JSON NOT NULL, 
	value FLOAT, 
	PRIMARY KEY (id)
);

CREATE TABLE deliveries (
	provider_id VARCHAR(64) NOT NULL, 
	outbox_id INTEGER, 
	status VARCHAR(24) NOT NULL, 
	error_code INTEGER, 
	updated DATETIME NOT NULL, 
	PRIMARY KEY (provider_id), 
	FOREIGN KEY(outbox_id) REFERENCES outbox (id) ON DELETE SET NULL
);

CREATE TABLE outbox (
	id INTEGER NOT NULL, 
	"key" VARCHAR(200) NOT NULL, 
	alert_identifier VARCHAR(200) NOT NULL, 
	subscriber_id INTEGER, 
	channel VARCHAR(20) NOT NULL, 
	zone VARCHAR(64) NOT NULL, 
	scope VARCHAR(80) NOT NULL, 
	body TEXT NOT NULL, 
	segments INTEGER NOT NULL, 
	state VARCHAR(12) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME, 
	claimed_at DATETIME, 
	claimed_by VARCHAR(40), 
	sent_at DATETIME, 
	provider_id VARCHAR(64), 
	error TEXT, 
	PRIMARY KEY (id), 
	UNIQUE (alert_identifier, subscriber_id, channel), 
	UNIQUE ("key"), 
	FOREIGN KEY(alert_identifier) REFERENCES alerts (identifier), 
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE SET NULL
);

CREATE TABLE reports (
	id INTEGER NOT NULL, 
	time DATETIME NOT NULL, 
	subscriber_id INTEGER, 
	zones JSON NOT NULL, 
	text TEXT NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE SET NULL
);

CREATE TABLE runs (
	id VARCHAR(64) NOT NULL, 
	at DATETIME NOT NULL, 
	scope VARCHAR(80) NOT NULL, 
	forecast_issued DATETIME, 
	forecast_file TEXT, 
	status VARCHAR(16) NOT NULL, 
	started DATETIME NOT NULL, 
	finished DATETIME, 
	summary JSON NOT NULL, 
	PRIMARY KEY (id)
);

CREATE TABLE subscribers (
	id INTEGER NOT NULL, 
	phone_hash VARCHAR(64) NOT NULL, 
	phone_enc TEXT NOT NULL, 
	zones JSON NOT NULL, 
	language VARCHAR(8) NOT NULL, 
	consent_source TEXT NOT NULL, 
	consent_time DATETIME NOT NULL, 
	opted_out_at DATETIME, 
	unreachable TEXT, 
	PRIMARY KEY (id), 
	UNIQUE (phone_hash)
);

CREATE TABLE zone_state (
	zone VARCHAR(64) NOT NULL, 
	scope VARCHAR(80) NOT NULL, 
	level INTEGER NOT NULL, 
	since DATETIME, 
	pending_level INTEGER NOT NULL, 
	pending_count INTEGER NOT NULL, 
	active BOOLEAN NOT NULL, 
	issued DATETIME, 
	chain JSON NOT NULL, 
	PRIMARY KEY (zone, scope)
);

CREATE INDEX ix_alerts_zone ON alerts (zone);

CREATE INDEX ix_approvals_state ON approvals (state);

CREATE INDEX ix_approvals_zone ON approvals (zone);

CREATE INDEX ix_audit_run_id ON audit (run_id);

CREATE INDEX ix_outbox_provider_id ON outbox (provider_id);

CREATE INDEX ix_outbox_state ON outbox (state);

CREATE INDEX ix_outbox_zone ON outbox (zone);
