-- completion-postgres schema, version 3: writers_in_flight() without the pg_locks lookup.
--
-- Version 2 looked the notifier lock up in pg_locks, which copies the whole lock table (and
-- every backend's fast-path locks) on each call: 60 us of server time per feed read against
-- 20 us now (pgbench, one client, PostgreSQL 15; a feed sends this check before every read it
-- makes after a wake-up).
--
-- The notifier lock is now *tried*, in shared mode, which fails while a notifier holds it.
-- Version 2 could not try it: a writer failing against the feed's attempt would skip its
-- NOTIFY with no notifier to cover it. What makes trying safe here: the check takes
-- session-level locks and releases them itself, in a fixed order:
--
--   1. the in-flight lock, exclusive: fails (answer true) while any writer is in flight;
--      while the check holds it, no writer can take it shared, and a writer tries the
--      notifier lock only while holding the in-flight lock, so no writer is at that step;
--   2. the notifier lock, shared: fails (answer true) while a committing notifier still
--      holds it (it released its in-flight lock first: locks go one lock-table partition at a
--      time, the race version 2 looked up);
--   3. releases the notifier lock, then the in-flight lock. By the time a writer can take the
--      in-flight lock again, the check no longer holds the notifier lock.
--
-- Transaction-level locks (version 2) are released at the end of the transaction in
-- lock-table order, which could drop the in-flight lock first: hence session locks and an
-- explicit order. A session lock outlives an error, so an error between taking and releasing
-- them (a cancel) releases them, in the same order, before it propagates; releasing a lock
-- not held only warns. (Not pg_advisory_unlock_all(): behind a transaction-mode pooler it
-- would drop other clients' session locks, and it releases in hash order.) Should the
-- release itself be cut short (a second cancel inside the handler), the client closes the
-- connection on any error of the check, which ends the session and its locks.

CREATE OR REPLACE FUNCTION writers_in_flight() RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_class integer := hashtext(current_schema() || '_completions');
    v_notifier_free boolean;
BEGIN
    BEGIN
        IF NOT pg_try_advisory_lock(v_class, 2) THEN
            RETURN true;
        END IF;
        v_notifier_free := pg_try_advisory_lock_shared(v_class, 1);
        IF v_notifier_free THEN
            PERFORM pg_advisory_unlock_shared(v_class, 1);
        END IF;
        PERFORM pg_advisory_unlock(v_class, 2);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock_shared(v_class, 1) WHERE v_notifier_free IS NOT FALSE;
        PERFORM pg_advisory_unlock(v_class, 2);
        RAISE;
    END;
    RETURN NOT v_notifier_free;
END
$$;
