-- Revocation that revokes, and a record of every admin action.
--
-- Every process caching a device key or an admin credential LISTENs on `suara_tally_revoked` and drops
-- the entry when it is revoked (payload `device:<device id>` or `admin:<credential id>`). NOTIFY is
-- delivered on commit; a listener that reconnects forgets its whole cache, and cached entries expire
-- soon anyway, so a missed notification delays a revocation a little, never for good.
CREATE FUNCTION tally.revocation_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('suara_tally_revoked', TG_ARGV[0] || ':' || (to_jsonb(NEW) ->> TG_ARGV[1]));
    RETURN NULL;
END;
$$;

CREATE TRIGGER device_revoked AFTER UPDATE OF revoked_at ON tally.device
FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
EXECUTE FUNCTION tally.revocation_notify('device', 'device_id');

CREATE TRIGGER admin_revoked AFTER UPDATE OF revoked_at ON tally.admin_credential
FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
EXECUTE FUNCTION tally.revocation_notify('admin', 'id');

-- Who did what to tally's credentials, and when: enrollments, revocations, admin credentials issued.
-- Append-only: tally's role may only add rows, and the trigger refuses any change or removal even
-- to the schema's owner (only a superuser disabling the trigger could, which is itself on record in
-- the server's log).
CREATE TABLE tally.admin_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL CHECK (actor <> ''),     -- an admin credential's id, or cli:<os user>@<host>
    action text NOT NULL CHECK (action ~ '^[a-z]+\.[a-z]+$'),  -- device.enroll, device.revoke, admin.issue …
    subject text NOT NULL,                       -- the device id, the credential id
    detail jsonb NOT NULL DEFAULT '{}'
);
REVOKE ALL ON tally.admin_log FROM suara_tally;
GRANT SELECT, INSERT ON tally.admin_log TO suara_tally;
GRANT USAGE ON SEQUENCE tally.admin_log_id_seq TO suara_tally;

CREATE FUNCTION tally.append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER admin_log_append_only BEFORE UPDATE OR DELETE ON tally.admin_log
FOR EACH ROW EXECUTE FUNCTION tally.append_only();
CREATE TRIGGER admin_log_no_truncate BEFORE TRUNCATE ON tally.admin_log
FOR EACH STATEMENT EXECUTE FUNCTION tally.append_only();
