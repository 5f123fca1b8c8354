-- :sensors sensors × :days days of one reading a minute: a daily cycle, a
-- per-sensor drift and noise.  About 8% of readings are missing at random,
-- and each sensor has outages of 5 to 90 minutes (sometimes a whole hour).
SELECT setseed(0.42);
INSERT INTO readings (sensor, ts, window_id, value)
SELECT s, t, s::bigint * 1000000 + extract(epoch FROM t)::bigint / 3600,
       20 + 5 * sin(extract(epoch FROM t) / 86400.0 * 2 * pi() + s)
             + s * 0.01 * extract(epoch FROM t - timestamptz '2026-01-01') / 3600.0
             + random() - 0.5
FROM generate_series(1, :sensors) AS s,
     generate_series(timestamptz '2026-01-01', timestamptz '2026-01-01' + (:days || ' days')::interval
                     - interval '1 minute', interval '1 minute') AS t
WHERE random() > 0.08;
-- Outages: for each sensor, a few random spans deleted.
DELETE FROM readings r USING (
    SELECT s AS sensor, timestamptz '2026-01-01' + random() * (:days || ' days')::interval AS start,
           (5 + random() * 85) * interval '1 minute' AS len
    FROM generate_series(1, :sensors) AS s, generate_series(1, 3 * :days)
) o
WHERE r.sensor = o.sensor AND r.ts >= o.start AND r.ts < o.start + o.len;
ANALYZE readings;
