-- The schema the release before versioned schemas created on SQLite (its create_tables,
-- audit.create_tables and security.create_tables on a new file), dumped from sqlite_master.
CREATE TABLE alert_deliveries (
	id INTEGER NOT NULL, 
	alert_id INTEGER NOT NULL, 
	channel VARCHAR(64) NOT NULL, 
	level INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	last_error TEXT, 
	sent_at DATETIME, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(alert_id) REFERENCES alerts (id)
);
CREATE TABLE alerts (
	id INTEGER NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	finding VARCHAR(64) NOT NULL, 
	probability FLOAT NOT NULL, 
	threshold FLOAT NOT NULL, 
	department VARCHAR(64) NOT NULL, 
	score FLOAT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	level INTEGER NOT NULL, 
	raised_at DATETIME NOT NULL, 
	last_seen_at DATETIME NOT NULL, 
	duplicates INTEGER NOT NULL, 
	escalated_at DATETIME, 
	acknowledged_by VARCHAR(128), 
	acknowledged_at DATETIME, 
	PRIMARY KEY (id)
);
CREATE TABLE api_tokens (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	token_sha256 VARCHAR(64) NOT NULL, 
	role VARCHAR(32) NOT NULL, 
	label VARCHAR(128) NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME, 
	revoked BOOLEAN NOT NULL, 
	last_used_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id), 
	UNIQUE (token_sha256)
);
CREATE TABLE audit_chain_head (
	id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE audit_events (
	seq INTEGER NOT NULL, 
	timestamp VARCHAR(24) NOT NULL, 
	actor VARCHAR(128) NOT NULL, 
	role VARCHAR(32) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	object_uids JSON NOT NULL, 
	details JSON NOT NULL, 
	prev_hash VARCHAR(64) NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	PRIMARY KEY (seq), 
	UNIQUE (hash)
);
CREATE TABLE feedback (
	id INTEGER NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	finding VARCHAR(64) NOT NULL, 
	verdict VARCHAR(16) NOT NULL, 
	label FLOAT NOT NULL, 
	probability FLOAT, 
	threshold FLOAT, 
	uncertainty FLOAT, 
	reader VARCHAR(128) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE instances (
	id INTEGER NOT NULL, 
	sop_instance_uid VARCHAR(64) NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	series_instance_uid VARCHAR(64) NOT NULL, 
	sop_class_uid VARCHAR(64) NOT NULL, 
	transfer_syntax_uid VARCHAR(64) NOT NULL, 
	modality VARCHAR(16) NOT NULL, 
	body_part VARCHAR(64) NOT NULL, 
	view_position VARCHAR(16) NOT NULL, 
	institution VARCHAR(128) NOT NULL, 
	series_description VARCHAR(256) NOT NULL, 
	calling_ae VARCHAR(16) NOT NULL, 
	peer_host VARCHAR(255) NOT NULL, 
	object_key VARCHAR(128) NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size BIGINT NOT NULL, 
	received_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (sop_instance_uid)
);
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	model_name VARCHAR(128) NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	destination VARCHAR(64) NOT NULL, 
	route VARCHAR(128) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	priority INTEGER NOT NULL, 
	attempts INTEGER NOT NULL, 
	max_attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_expires_at DATETIME, 
	payload JSON NOT NULL, 
	error TEXT, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_job_identity UNIQUE (study_instance_uid, model_name, model_version, kind, destination)
);
CREATE TABLE login_throttle (
	"key" VARCHAR(300) NOT NULL, 
	failures INTEGER NOT NULL, 
	last_failure_at DATETIME, 
	locked_until DATETIME, 
	PRIMARY KEY ("key")
);
CREATE TABLE results (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	model_name VARCHAR(128) NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	summary JSON NOT NULL, 
	artifacts JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_result_identity UNIQUE (study_instance_uid, model_name, model_version)
);
CREATE TABLE studies (
	id INTEGER NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	instance_count INTEGER NOT NULL, 
	first_instance_at DATETIME NOT NULL, 
	last_instance_at DATETIME NOT NULL, 
	completed_at DATETIME, 
	complete_reason VARCHAR(32) NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (study_instance_uid)
);
CREATE TABLE users (
	id INTEGER NOT NULL, 
	username VARCHAR(64) NOT NULL, 
	role VARCHAR(32) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	active BOOLEAN NOT NULL, 
	session_epoch INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	last_login_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (username)
);
CREATE TABLE worklist_items (
	id INTEGER NOT NULL, 
	study_instance_uid VARCHAR(64) NOT NULL, 
	sop_instance_uid VARCHAR(64) NOT NULL, 
	path VARCHAR(1024) NOT NULL, 
	patient_id VARCHAR(64) NOT NULL, 
	department VARCHAR(64) NOT NULL, 
	patient_age FLOAT, 
	received_at DATETIME, 
	score FLOAT NOT NULL, 
	breakdown JSON NOT NULL, 
	findings JSON NOT NULL, 
	has_critical BOOLEAN NOT NULL, 
	critical_findings JSON NOT NULL, 
	model_name VARCHAR(128) NOT NULL, 
	model_version VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	reader VARCHAR(128) NOT NULL, 
	scored_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (study_instance_uid)
);
CREATE INDEX ix_alert_deliveries_alert_id ON alert_deliveries (alert_id);
CREATE INDEX ix_alert_deliveries_due ON alert_deliveries (state, next_attempt_at);
CREATE INDEX ix_alerts_identity ON alerts (study_instance_uid, finding, raised_at);
CREATE INDEX ix_alerts_state ON alerts (state);
CREATE INDEX ix_api_tokens_user_id ON api_tokens (user_id);
CREATE INDEX ix_audit_events_action ON audit_events (action);
CREATE INDEX ix_audit_events_actor ON audit_events (actor);
CREATE INDEX ix_audit_events_timestamp ON audit_events (timestamp);
CREATE INDEX ix_feedback_study_instance_uid ON feedback (study_instance_uid);
CREATE INDEX ix_instances_study_instance_uid ON instances (study_instance_uid);
CREATE INDEX ix_jobs_claim ON jobs (state, next_attempt_at);
CREATE INDEX ix_jobs_study_instance_uid ON jobs (study_instance_uid);
CREATE INDEX ix_results_job_id ON results (job_id);
CREATE INDEX ix_results_study_instance_uid ON results (study_instance_uid);
CREATE INDEX ix_studies_state ON studies (state);
CREATE INDEX ix_worklist_items_department ON worklist_items (department);
CREATE INDEX ix_worklist_items_has_critical ON worklist_items (has_critical);
CREATE INDEX ix_worklist_items_score ON worklist_items (score);
CREATE INDEX ix_worklist_order ON worklist_items (state, score DESC, received_at, id);
INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
