-- completion-postgres schema, version 4: the log is ordered by tickets, and only writers that
-- appended hold it back.
--
-- Versions 1-3 ordered the log by (xid, id) and read it below the horizon, the oldest running
-- transaction id of the whole cluster. Every transaction that held an xid anywhere on the
-- server held completions back, also one that never touched this schema.
--
-- From here on every event gets a *ticket* when it is appended (the column default
-- `next_ticket()`, so every INSERT takes one, whichever function body runs it), and readers
-- read in ticket order, up to `final_ticket()`:
--
-- Both read the sequence with pg_sequence_last_value(), exactly (see last_ticket()).
--
-- 1. next_ticket(), in the appending transaction, reads v = the last ticket handed out, then
--    registers: it takes the transaction-level advisory lock (writer class, low 32 bits of v)
--    in shared mode, held until the transaction ends; only then does it draw its ticket
--    (nextval > v). A transaction registers once (a transaction-local setting remembers it):
--    its first registration bounds every ticket it draws later.
-- 2. final_ticket() reads T0 = the last ticket handed out, *then* looks up the registrations
--    in pg_locks, and answers F = min(T0, every registered v). It is its own statement; the
--    read that uses F runs after it, in a statement (so a snapshot) of its own.
--
-- Why every ticket t <= F is final (committed and visible to the read, or rolled back): t <= T0,
-- so t was drawn before final_ticket() read T0. Its writer W registered before drawing it. Had
-- W still been in flight at the pg_locks lookup, either it registered before the lookup, and
-- F <= v_W < t; or after it, and then it drew t after T0 was read, t > T0 >= F. Both contradict
-- t <= F, so W had ended by the lookup: its locks are released only after its commit is
-- visible, so the read, whose snapshot is taken after the lookup, sees its events.
-- Nothing else holds the log back: a transaction that never appends (other tables, another
-- database, idle in transaction) registers nothing. One that took its xid long ago and
-- appends late registers when it appends, with the tickets of that moment. Savepoints: a
-- rolled-back subtransaction releases the locks it took and reverts the setting with it, so
-- the next append registers again. A writer that rolls back leaves a ticket unused.
--
-- Reconstruction: pg_locks gives the low 32 bits of v; final_ticket() takes the value with
-- those bits in (T0 - 2^31, T0 + 2^31]. This is v as long as fewer than 2^31 tickets were
-- drawn while one writer stayed in flight (documented in docs/postgres.md).
--
-- The xid column stays (and its default): builds of versions 1-3 running with migrate = false
-- keep reading by (xid, id) below the horizon, and cursors they wrote (`postgres:<xid>.<id>`)
-- are mapped to tickets when a stream resumes from them (see the Rust side, `legacy_ticket`).
-- Existing events get tickets in (xid, id) order, from 3 on; when anything was pruned the
-- ticket watermark is 2, so a cursor older than the pruned events maps to ticket 1 and is
-- told about the gap.

CREATE SEQUENCE completion_ticket AS bigint MINVALUE 1 START 3;

ALTER TABLE completion_log ADD COLUMN ticket bigint;
UPDATE completion_log l SET ticket = o.ticket
  FROM (SELECT c.id, 2 + row_number() OVER (ORDER BY c.xid, c.id) AS ticket FROM completion_log c) o
 WHERE l.id = o.id;
SELECT setval('completion_ticket', coalesce((SELECT max(l.ticket) FROM completion_log l), 2), true);

ALTER TABLE pruned_to ADD COLUMN ticket bigint NOT NULL DEFAULT 0;
UPDATE pruned_to SET ticket = 2 WHERE (xid, id) > ('0'::xid8, 0) OR pruned > 0;

-- The writers' registration lock class (the first key of the two-key form), distinct from
-- lock_class() (the in-flight and notifier locks of version 2).
CREATE FUNCTION writer_class() RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$ BEGIN RETURN hashtext(current_schema() || '_completions_writers'); END $$;

-- The last ticket handed out (2 before the first). pg_sequence_last_value() reads the
-- sequence under its buffer lock: a plain SELECT of the sequence's row does not, and every 32
-- draws nextval() briefly writes the value it logs ahead (32 more) into that row before
-- setting it back, so a SELECT could see a value up to 32 too high (found by review and
-- reproduced: 66 decreases in 1.5 million reads beside a drawing session; 0 with this
-- function). A value too high here would let final_ticket() pass tickets not yet drawn.
CREATE FUNCTION last_ticket() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$ BEGIN RETURN coalesce(pg_sequence_last_value('completion_ticket'::regclass), 2); END $$;

-- The column default of completion_log.ticket: registers this transaction (once), then draws.
CREATE FUNCTION next_ticket() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_class integer := hashtext(current_schema() || '_completions_writers');
    v_setting text := 'completions.registered_' || (v_class::bigint + 2147483648)::text;
    v_last bigint;
BEGIN
    IF current_setting(v_setting, true) IS DISTINCT FROM 'on' THEN
        -- Exact, under the sequence's lock (see last_ticket()).
        v_last := coalesce(pg_sequence_last_value('completion_ticket'::regclass), 2);
        PERFORM pg_advisory_xact_lock_shared(v_class, ((v_last % 4294967296) - 2147483648)::integer);
        PERFORM set_config(v_setting, 'on', true);
    END IF;
    RETURN nextval('completion_ticket');
END
$$;

ALTER TABLE completion_log ALTER COLUMN ticket SET DEFAULT next_ticket();
ALTER TABLE completion_log ALTER COLUMN ticket SET NOT NULL;
CREATE UNIQUE INDEX completion_log_ticket ON completion_log (ticket);
-- Filtered reads walk a namespace in ticket order; the (namespace, xid, id) index of version 1
-- served reads in xid order, which this build no longer makes.
DROP INDEX completion_log_namespace;
CREATE INDEX completion_log_namespace_ticket ON completion_log (namespace, ticket);
-- Reads no longer walk (xid, id): only a cursor of versions 1-3 is mapped by it, once per
-- resume, and a scan serves that. Builds of versions 1-3 still read correctly, without it.
DROP INDEX completion_log_position;
-- Completions by execution id: emit_completion refuses a second one, and lookups by id.
CREATE INDEX completion_log_execution ON completion_log (execution_id);
-- The reason given to fail or cancel (not delivered: kept for lookups), and the token of the
-- emit_completion call that appended the event (a retried call recognises its own).
ALTER TABLE completion_log ADD COLUMN reason text, ADD COLUMN emit_token text;

-- Every ticket at or below the answer is final (see the top of this file). Run it in a
-- statement of its own, before the statement that reads up to it.
CREATE FUNCTION final_ticket() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_class integer := hashtext(current_schema() || '_completions_writers');
    v_t0 bigint;
    v_top bigint;
    v_min bigint;
BEGIN
    -- A standby sees neither the primary's advisory locks nor its sequence's exact value:
    -- every answer would be wrong there.
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'the completion log cannot be read on a standby (read it on the primary)'
            USING ERRCODE = 'CM005';
    END IF;
    -- Exact, under the sequence's lock (see last_ticket()).
    v_t0 := coalesce(pg_sequence_last_value('completion_ticket'::regclass), 2);
    v_top := v_t0 + 2147483648;
    -- Two-key advisory locks show as classid = first key, objid = second key, objsubid = 2;
    -- objid (an oid) holds the second key's bits unsigned: (low 32 bits of v) + 2^31, mod 2^32.
    -- A writer that registered after T0 was read may hold a v above T0: the window is
    -- (T0 - 2^31, T0 + 2^31], and such a v cannot lower F below T0 anyway.
    SELECT min(v_top - ((v_top - ((l.objid::bigint + 2147483648) % 4294967296)) % 4294967296 + 4294967296) % 4294967296)
      INTO v_min
      FROM pg_locks l
     WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = v_class::oid
       AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    RETURN least(v_t0, coalesce(v_min, v_t0));
END
$$;

-- Retention in ticket order: deletes the oldest final events so that at most p_max_events
-- remain and none is older than p_max_age_ms (NULL disables a limit), a prefix of the log.
-- The ticket watermark only moves forward; the (xid, id) watermark of versions 1-3 becomes
-- the largest (xid, id) deleted, for builds that still read by it.
CREATE FUNCTION prune_tickets(p_max_events bigint, p_max_age_ms bigint, OUT deleted bigint, OUT watermark bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_now bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    v_final bigint;
    v_bound bigint; -- delete only tickets strictly below it
    v_all boolean := false;
    v_ticket bigint;
    v_xid xid8;
    v_id bigint;
BEGIN
    deleted := 0;
    -- One prune at a time per schema.
    SELECT p.ticket INTO watermark FROM pruned_to p FOR UPDATE;
    v_final := final_ticket();

    IF p_max_events IS NOT NULL THEN
        IF p_max_events <= 0 THEN
            v_all := true;
        ELSE
            SELECT l.ticket INTO v_ticket FROM completion_log l ORDER BY l.ticket DESC OFFSET p_max_events - 1 LIMIT 1;
            IF FOUND THEN
                v_bound := v_ticket;
            END IF;
        END IF;
    END IF;
    IF p_max_age_ms IS NOT NULL AND NOT v_all THEN
        -- The oldest event young enough to keep; everything before it goes.
        SELECT l.ticket INTO v_ticket FROM completion_log l
         WHERE l.completed_at_ms >= v_now - p_max_age_ms ORDER BY l.ticket LIMIT 1;
        IF NOT FOUND THEN
            v_all := true;
        ELSIF v_bound IS NULL OR v_ticket > v_bound THEN
            v_bound := v_ticket;
        END IF;
    END IF;
    IF NOT v_all AND v_bound IS NULL THEN
        RETURN;
    END IF;
    IF v_all THEN
        v_bound := v_final + 1;
    ELSE
        v_bound := least(v_bound, v_final + 1);
    END IF;

    -- The newest event to delete: the prefix ends there.
    SELECT l.ticket INTO v_ticket FROM completion_log l WHERE l.ticket < v_bound ORDER BY l.ticket DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT l.xid, l.id INTO v_xid, v_id FROM completion_log l WHERE l.ticket <= v_ticket
     ORDER BY l.xid DESC, l.id DESC LIMIT 1;
    DELETE FROM completion_log l WHERE l.ticket <= v_ticket;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    IF v_ticket > watermark THEN
        UPDATE pruned_to p
           SET ticket = v_ticket, pruned = p.pruned + deleted, pruned_at_ms = v_now,
               xid = greatest(p.xid, v_xid),
               id = CASE WHEN v_xid > p.xid OR (v_xid = p.xid AND v_id > p.id) THEN v_id ELSE p.id END;
        watermark := v_ticket;
    END IF;
END
$$;

-- The version 1 entry point, for builds that still call it: prunes in ticket order and answers
-- the (xid, id) watermark they read by.
CREATE OR REPLACE FUNCTION prune(p_max_events bigint, p_max_age_ms bigint,
                                 OUT deleted bigint, OUT watermark_xid xid8, OUT watermark_id bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    SELECT t.deleted INTO deleted FROM prune_tickets(p_max_events, p_max_age_ms) t;
    SELECT p.xid, p.id INTO watermark_xid, watermark_id FROM pruned_to p;
END
$$;

-- The terminal write of version 2, and its NOTIFY carries the event (version 4): the feed
-- delivers it from the notification when its ticket follows the feed's position, without a
-- log read first (see the Rust side, `notification.rs`). Only a transaction's first event is
-- carried (a transaction-local setting remembers it): its later ones NOTIFY an empty payload,
-- which PostgreSQL folds into one, and the feed reads the log for them. A payload that would
-- reach the 8000-byte limit is sent empty.
CREATE OR REPLACE FUNCTION finish_execution(p_id text, p_outcome text, p_reason text, p_token text,
                                            p_coalesce boolean DEFAULT true)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_now bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    -- lock_class() and notify_channel(), inline: calling them costs more than they do.
    v_class integer := hashtext(current_schema() || '_completions');
    v_row executions%ROWTYPE;
    v_event completion_log%ROWTYPE;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('succeeded', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'invalid outcome %', p_outcome USING ERRCODE = 'CM004';
    END IF;
    IF p_coalesce THEN
        PERFORM pg_advisory_xact_lock_shared(v_class, 2);
    END IF;
    WITH finished AS (
        UPDATE executions e
           SET state = p_outcome, reason = p_reason, completed_at_ms = v_now, terminal_token = p_token
         WHERE e.id = p_id AND e.state = 'active'
        RETURNING e.id, e.flow_id, e.namespace, e.tags
    )
    INSERT INTO completion_log (execution_id, flow_id, namespace, outcome, tags, completed_at_ms, reason)
    SELECT f.id, f.flow_id, f.namespace, p_outcome, f.tags, v_now, p_reason FROM finished f
    RETURNING * INTO v_event;
    IF NOT FOUND THEN
        -- Not active (or absent). A concurrent finisher's UPDATE made ours wait and then skip
        -- the row: this statement's fresh snapshot sees what it committed.
        SELECT * INTO v_row FROM executions e WHERE e.id = p_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'execution % not found', p_id USING ERRCODE = 'CM001';
        END IF;
        IF p_token IS NOT NULL AND v_row.terminal_token = p_token THEN
            RETURN v_row.completed_at_ms; -- this very call, retried after its reply was lost
        END IF;
        RAISE EXCEPTION 'execution % is already terminal (%)', p_id, v_row.state
            USING ERRCODE = 'CM002', DETAIL = v_row.state;
    END IF;
    IF NOT p_coalesce OR pg_try_advisory_xact_lock(v_class, 1) THEN
        PERFORM pg_notify(current_schema() || '_completions', notification_payload(v_event));
    END IF;
    RETURN v_now;
END
$$;

-- The NOTIFY payload for `p_event`: the event as JSON for a transaction's first event (if it
-- fits), else empty. Keys: v (payload version), t (ticket), e (execution id), n (namespace),
-- f (flow id or null), o (outcome), g (tags), c (completed_at_ms).
CREATE FUNCTION notification_payload(p_event completion_log) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_setting text := 'completions.notified_' || (hashtext(current_schema() || '_completions')::bigint + 2147483648)::text;
    v_payload text;
BEGIN
    IF current_setting(v_setting, true) IS NOT DISTINCT FROM 'on' THEN
        RETURN '';
    END IF;
    PERFORM set_config(v_setting, 'on', true);
    v_payload := json_build_object('v', 1, 't', p_event.ticket, 'e', p_event.execution_id, 'n', p_event.namespace,
                                   'f', p_event.flow_id, 'o', p_event.outcome, 'g', p_event.tags,
                                   'c', p_event.completed_at_ms)::text;
    IF octet_length(v_payload) >= 8000 THEN
        RETURN '';
    END IF;
    RETURN v_payload;
END
$$;

-- Emits a completion for an execution whose state the caller keeps itself (no executions
-- row): appends to the log and notifies exactly like finish_execution, in the caller's
-- transaction, so the event commits or rolls back with the caller's own state change.
-- Refuses (CM002, DETAIL = the first outcome) when the log already holds a completion of
-- the execution, unless p_allow_repeat (or the holder is this very call, retried: same
-- token). Concurrent emits of one id queue on a transaction-level advisory lock keyed by the
-- id, so the second sees the first once it committed. p_completed_at_ms is the caller's own
-- completion time (NULL: this server's clock). The check sees what the log retains:
-- once retention pruned the first completion, a second is accepted.
CREATE FUNCTION emit_completion(p_execution_id text, p_namespace text, p_outcome text, p_reason text,
                                p_flow_id text, p_tags jsonb, p_token text,
                                p_allow_repeat boolean DEFAULT false, p_coalesce boolean DEFAULT true,
                                p_completed_at_ms bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_now bigint := coalesce(p_completed_at_ms, floor(extract(epoch FROM clock_timestamp()) * 1000));
    v_class integer := hashtext(current_schema() || '_completions');
    v_prior completion_log%ROWTYPE;
    v_event completion_log%ROWTYPE;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('succeeded', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'invalid outcome %', p_outcome USING ERRCODE = 'CM004';
    END IF;
    IF p_execution_id IS NULL OR p_execution_id = '' THEN
        RAISE EXCEPTION 'the execution id must not be empty' USING ERRCODE = 'CM004';
    END IF;
    IF p_namespace IS NULL OR p_namespace = '' THEN
        RAISE EXCEPTION 'the namespace of execution % must not be empty', p_execution_id USING ERRCODE = 'CM004';
    END IF;
    IF p_tags IS NOT NULL AND jsonb_typeof(p_tags) <> 'object' THEN
        RAISE EXCEPTION 'the tags of execution % must be a JSON object', p_execution_id USING ERRCODE = 'CM004';
    END IF;
    IF NOT p_allow_repeat AND current_setting('transaction_isolation') = 'repeatable read' THEN
        -- Its snapshot predates the lock below: the check could not see a first emit that
        -- committed meanwhile (SERIALIZABLE fails such a pair with 40001 instead).
        RAISE EXCEPTION 'emit_completion of % in a REPEATABLE READ transaction cannot refuse a repeat: use READ COMMITTED or SERIALIZABLE, or allow repeats', p_execution_id
            USING ERRCODE = 'CM004';
    END IF;
    IF NOT p_allow_repeat THEN
        PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '_completions_emit'), hashtext(p_execution_id));
        SELECT * INTO v_prior FROM completion_log l WHERE l.execution_id = p_execution_id ORDER BY l.ticket LIMIT 1;
        IF FOUND THEN
            IF p_token IS NOT NULL AND v_prior.emit_token = p_token THEN
                RETURN v_prior.completed_at_ms; -- this very call, retried after its reply was lost
            END IF;
            RAISE EXCEPTION 'execution % is already terminal (%)', p_execution_id, v_prior.outcome
                USING ERRCODE = 'CM002', DETAIL = v_prior.outcome;
        END IF;
    END IF;
    IF p_coalesce THEN
        PERFORM pg_advisory_xact_lock_shared(v_class, 2);
    END IF;
    INSERT INTO completion_log (execution_id, flow_id, namespace, outcome, tags, completed_at_ms, reason, emit_token)
    VALUES (p_execution_id, nullif(p_flow_id, ''), p_namespace, p_outcome, coalesce(p_tags, '{}'::jsonb), v_now,
            p_reason, p_token)
    RETURNING * INTO v_event;
    IF NOT p_coalesce OR pg_try_advisory_xact_lock(v_class, 1) THEN
        PERFORM pg_notify(current_schema() || '_completions', notification_payload(v_event));
    END IF;
    RETURN v_now;
END
$$;
