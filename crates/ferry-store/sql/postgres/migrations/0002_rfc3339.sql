-- Microseconds since the epoch as RFC 3339 in UTC, for event data written in SQL.
CREATE FUNCTION ferry_rfc3339(us bigint) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT to_char(to_timestamp(us / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;
