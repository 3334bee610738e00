-- completion-postgres schema, version 2: NOTIFYs coalesced across concurrent writers.
--
-- Every transaction that NOTIFYs takes a database-wide lock at commit and holds it until its
-- commit record is flushed, so notifying commits run single file (see docs/postgres.md). The
-- feed only needs to be woken, not told what changed, so one notification can stand in for
-- every writer in flight alongside it:
--
-- - every terminal write holds the schema's *in-flight* lock in shared mode until its
--   transaction ends (pg_advisory_xact_lock_shared(class, 2));
-- - it NOTIFYs only if it gets the *notifier* lock (pg_try_advisory_xact_lock(class, 1)),
--   i.e. no other transaction is about to notify; otherwise that one's notification wakes
--   the feed;
-- - the feed, before every read it makes after a wake-up, asks `writers_in_flight()` (on the
--   same connection, in a statement of its own, so before the read's snapshot), and while
--   the answer is true reads again shortly: once no writer is in flight, every writer that
--   skipped its NOTIFY has committed, before the read that follows.
--
-- Locks are released after a commit is visible, so "not in flight" implies "committed or
-- rolled back". A skipper whose notifier rolls back (the notifier's NOTIFY is gone) is read
-- at the feed's next read: its next wake-up, re-check or safety read.
--
-- `p_coalesce => false` keeps one NOTIFY per transaction, for callers that hold a finishing
-- transaction open for long (it would hold the notifier lock and leave the others' wake-ups to
-- the feed's re-checks, which only start after a wake-up or a safety read).
--
-- The function also finishes the execution with one UPDATE ... WHERE state = 'active'
-- RETURNING feeding the event INSERT (version 1 locked the row with SELECT ... FOR UPDATE
-- first, then updated it: two passes and a lock record).

-- The advisory lock class of this schema (the first key of the two-key form).
-- PL/pgSQL, not SQL: a SQL function with a SET clause is not inlined, and is parsed and
-- planned again on every call; PL/pgSQL keeps its plans for the session.
CREATE FUNCTION lock_class() RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$ BEGIN RETURN hashtext(current_schema() || '_completions'); END $$;

-- True while a terminal write of this schema is in flight (holds the in-flight lock), or a
-- notifier still holds the notifier lock. Run in a statement (and transaction) of its own:
-- the exclusive lock it takes when no writer is in flight is released when that statement's
-- transaction ends, a moment later.
--
-- Why the notifier lock too: a committing transaction releases its locks one lock-table
-- partition at a time, so a notifier may drop its in-flight lock before its notifier lock. A
-- writer that starts in between skips its NOTIFY against it, while a check that only tried the
-- in-flight lock would already answer false (and the notifier's notification may have been
-- read already, by a wake-up of an earlier one). The notifier lock is looked up, not tried: a
-- writer that failed against the feed's attempt would skip its NOTIFY with no notifier to
-- cover it. (Found by review, reasoning from PostgreSQL's commit path; not reproduced.)
CREATE FUNCTION writers_in_flight() RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_class integer := hashtext(current_schema() || '_completions');
BEGIN
    IF NOT pg_try_advisory_xact_lock(v_class, 2) THEN
        RETURN true;
    END IF;
    -- Two-key advisory locks show as classid = first key, objid = second key, objsubid = 2.
    RETURN EXISTS (
        SELECT 1 FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = v_class::oid AND l.objid = 1
           AND l.granted AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
    );
END
$$;

DROP FUNCTION finish_execution(text, text, text, text);

CREATE FUNCTION finish_execution(p_id text, p_outcome text, p_reason text, p_token text,
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
    INSERT INTO completion_log (execution_id, flow_id, namespace, outcome, tags, completed_at_ms)
    SELECT f.id, f.flow_id, f.namespace, p_outcome, f.tags, v_now FROM finished f;
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
        PERFORM pg_notify(current_schema() || '_completions', '');
    END IF;
    RETURN v_now;
END
$$;
