-- Revocation that revokes, and a record of every admin action (as tally's 0004).
--
-- Processes caching a service credential LISTEN on `suara_aggregate_revoked` and drop it when it is
-- revoked (payload `service:<credential id>`, `official:<official id>`; officials are looked up on
-- every recap, so theirs bite at once anyway).
CREATE FUNCTION aggregate.revocation_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('suara_aggregate_revoked', TG_ARGV[0] || ':' || (to_jsonb(NEW) ->> TG_ARGV[1]));
    RETURN NULL;
END;
$$;

CREATE TRIGGER service_credential_revoked AFTER UPDATE OF revoked_at ON aggregate.service_credential
FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
EXECUTE FUNCTION aggregate.revocation_notify('service', 'id');

CREATE TRIGGER official_revoked AFTER UPDATE OF revoked_at ON aggregate.official
FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
EXECUTE FUNCTION aggregate.revocation_notify('official', 'official_id');

-- Who did what to aggregate's credentials, and when: officials enrolled and revoked, service
-- credentials issued and revoked. Append-only, as tally.admin_log.
CREATE TABLE aggregate.admin_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL CHECK (actor <> ''),
    action text NOT NULL CHECK (action ~ '^[a-z]+\.[a-z]+$'),
    subject text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'
);
REVOKE ALL ON aggregate.admin_log FROM suara_aggregate;
GRANT SELECT, INSERT ON aggregate.admin_log TO suara_aggregate;
GRANT USAGE ON SEQUENCE aggregate.admin_log_id_seq TO suara_aggregate;

CREATE FUNCTION aggregate.append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER admin_log_append_only BEFORE UPDATE OR DELETE ON aggregate.admin_log
FOR EACH ROW EXECUTE FUNCTION aggregate.append_only();
CREATE TRIGGER admin_log_no_truncate BEFORE TRUNCATE ON aggregate.admin_log
FOR EACH STATEMENT EXECUTE FUNCTION aggregate.append_only();
