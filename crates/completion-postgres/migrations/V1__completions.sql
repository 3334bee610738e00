-- completion-postgres schema, version 1.
--
-- Runs with `search_path` set to the backend's schema only (the runner sets it), so every
-- name below lands in that schema. Every function is created with
-- `SET search_path FROM CURRENT`: it resolves its tables in the schema it was created in,
-- whatever the caller's search_path, and `current_schema()` inside it names that schema.
--
-- Error codes raised by the functions (class CM is not used by PostgreSQL):
--   CM001  execution not found
--   CM002  execution already terminal (DETAIL holds the outcome it reached)
--   CM003  execution already exists
--   CM004  invalid argument

CREATE TABLE executions (
    id              text PRIMARY KEY,
    namespace       text NOT NULL,
    flow_id         text,
    tags            jsonb NOT NULL DEFAULT '{}'::jsonb,
    state           text NOT NULL DEFAULT 'active'
                    CHECK (state IN ('active', 'succeeded', 'failed', 'cancelled')),
    reason          text,
    created_at_ms   bigint NOT NULL,
    completed_at_ms bigint,
    -- Random tokens of the calls that created / finished the execution: a call retried after
    -- a lost reply recognises its own earlier success instead of reporting a conflict.
    create_token    text,
    terminal_token  text
);

-- The completion log. Its order is (xid, id): the inserting transaction's id, then the
-- sequence. Readers only read below the oldest running transaction id
-- (pg_snapshot_xmin(pg_current_snapshot())), where the set of rows can no longer change,
-- so a transaction that commits late can never slip in behind a reader's cursor.
CREATE TABLE completion_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    execution_id    text NOT NULL,
    flow_id         text,
    namespace       text NOT NULL,
    outcome         text NOT NULL,
    -- Copied from the execution at the terminal write: filters need no join.
    tags            jsonb NOT NULL,
    completed_at_ms bigint NOT NULL
);
CREATE INDEX completion_log_position ON completion_log (xid, id);
CREATE INDEX completion_log_namespace ON completion_log (namespace, xid, id);
CREATE INDEX completion_log_tags ON completion_log USING gin (tags jsonb_path_ops);

-- Retention bookkeeping: one row. Every event at or before (xid, id) was pruned.
CREATE TABLE pruned_to (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    xid          xid8 NOT NULL DEFAULT '0',
    id           bigint NOT NULL DEFAULT 0,
    pruned       bigint NOT NULL DEFAULT 0,
    pruned_at_ms bigint
);
INSERT INTO pruned_to DEFAULT VALUES;

-- The NOTIFY channel of this schema. The Rust side computes the same name
-- (`<schema>_completions`, at most 53 bytes for the longest schema name it accepts).
CREATE FUNCTION notify_channel() RETURNS text
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$ SELECT current_schema() || '_completions' $$;

CREATE FUNCTION create_execution(p_id text, p_namespace text, p_flow_id text, p_tags jsonb, p_token text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_now bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    v_token text;
    v_created bigint;
BEGIN
    INSERT INTO executions (id, namespace, flow_id, tags, created_at_ms, create_token)
    VALUES (p_id, p_namespace, p_flow_id, coalesce(p_tags, '{}'::jsonb), v_now, p_token)
    ON CONFLICT (id) DO NOTHING;
    IF FOUND THEN
        RETURN v_now;
    END IF;
    SELECT e.create_token, e.created_at_ms INTO v_token, v_created FROM executions e WHERE e.id = p_id;
    IF p_token IS NOT NULL AND v_token = p_token THEN
        RETURN v_created; -- this very call, retried after its reply was lost
    END IF;
    RAISE EXCEPTION 'execution % already exists', p_id USING ERRCODE = 'CM003';
END
$$;

-- The one terminal transition: complete (succeeded), fail, cancel. In the caller's
-- transaction: lock the execution, check it, write its state, append the event, NOTIFY.
-- The NOTIFY payload is empty and the channel fixed, so however many events a transaction
-- appends, PostgreSQL delivers one notification for it (identical notifications of one
-- transaction are folded) and a payload can never approach the 8000-byte limit.
CREATE FUNCTION finish_execution(p_id text, p_outcome text, p_reason text, p_token text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_now bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    v_row executions%ROWTYPE;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('succeeded', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'invalid outcome %', p_outcome USING ERRCODE = 'CM004';
    END IF;
    SELECT * INTO v_row FROM executions e WHERE e.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'execution % not found', p_id USING ERRCODE = 'CM001';
    END IF;
    IF v_row.state <> 'active' THEN
        IF p_token IS NOT NULL AND v_row.terminal_token = p_token THEN
            RETURN v_row.completed_at_ms; -- this very call, retried after its reply was lost
        END IF;
        RAISE EXCEPTION 'execution % is already terminal (%)', p_id, v_row.state
            USING ERRCODE = 'CM002', DETAIL = v_row.state;
    END IF;
    UPDATE executions
       SET state = p_outcome, reason = p_reason, completed_at_ms = v_now, terminal_token = p_token
     WHERE id = p_id;
    INSERT INTO completion_log (execution_id, flow_id, namespace, outcome, tags, completed_at_ms)
    VALUES (v_row.id, v_row.flow_id, v_row.namespace, p_outcome, v_row.tags, v_now);
    PERFORM pg_notify(notify_channel(), ''); -- one definition of the channel name
    RETURN v_now;
END
$$;

-- Retention: deletes the oldest events so that at most p_max_events remain and none is
-- older than p_max_age_ms (NULL disables a limit). Deletes a prefix of the log in (xid, id)
-- order, and only below the horizon: a row above it could still be joined by a
-- late-committing transaction with a smaller xid, which would then land behind the
-- watermark. The watermark (pruned_to) only moves forward.
CREATE FUNCTION prune(p_max_events bigint, p_max_age_ms bigint,
                      OUT deleted bigint, OUT watermark_xid xid8, OUT watermark_id bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_now bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    v_horizon xid8;
    v_all boolean := false;
    v_bound_xid xid8; -- delete only events strictly before (v_bound_xid, v_bound_id)
    v_bound_id bigint;
    v_xid xid8;
    v_id bigint;
BEGIN
    deleted := 0;
    -- One prune at a time per schema.
    SELECT p.xid, p.id INTO watermark_xid, watermark_id FROM pruned_to p FOR UPDATE;
    v_horizon := pg_snapshot_xmin(pg_current_snapshot());

    IF p_max_events IS NOT NULL THEN
        IF p_max_events <= 0 THEN
            v_all := true;
        ELSE
            SELECT l.xid, l.id INTO v_xid, v_id FROM completion_log l
             ORDER BY l.xid DESC, l.id DESC OFFSET p_max_events - 1 LIMIT 1;
            IF FOUND THEN
                v_bound_xid := v_xid;
                v_bound_id := v_id;
            END IF;
        END IF;
    END IF;
    IF p_max_age_ms IS NOT NULL AND NOT v_all THEN
        -- The oldest event young enough to keep; everything before it goes.
        SELECT l.xid, l.id INTO v_xid, v_id FROM completion_log l
         WHERE l.completed_at_ms >= v_now - p_max_age_ms
         ORDER BY l.xid, l.id LIMIT 1;
        IF NOT FOUND THEN
            v_all := true;
        ELSIF v_bound_xid IS NULL OR (v_xid, v_id) > (v_bound_xid, v_bound_id) THEN
            v_bound_xid := v_xid;
            v_bound_id := v_id;
        END IF;
    END IF;
    IF NOT v_all AND v_bound_xid IS NULL THEN
        RETURN;
    END IF;

    -- The newest event to delete: the prefix ends there.
    IF v_all THEN
        SELECT l.xid, l.id INTO v_xid, v_id FROM completion_log l
         WHERE l.xid < v_horizon
         ORDER BY l.xid DESC, l.id DESC LIMIT 1;
    ELSE
        SELECT l.xid, l.id INTO v_xid, v_id FROM completion_log l
         WHERE l.xid < v_horizon AND (l.xid, l.id) < (v_bound_xid, v_bound_id)
         ORDER BY l.xid DESC, l.id DESC LIMIT 1;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    DELETE FROM completion_log l WHERE (l.xid, l.id) <= (v_xid, v_id);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    IF (v_xid, v_id) > (watermark_xid, watermark_id) THEN
        UPDATE pruned_to SET xid = v_xid, id = v_id, pruned = pruned + deleted, pruned_at_ms = v_now;
        watermark_xid := v_xid;
        watermark_id := v_id;
    END IF;
END
$$;
