-- The timeseries example's tables: raw sensor readings (one a minute, with
-- gaps) and the features computed per sensor-hour.
CREATE TABLE IF NOT EXISTS readings (
    sensor    int              NOT NULL,
    ts        timestamptz      NOT NULL,
    value     double precision NOT NULL,
    -- One window per sensor and hour, the source's key:
    -- sensor * 1000000 + hours since 1970 (set by whoever inserts).
    window_id bigint           NOT NULL,
    PRIMARY KEY (sensor, ts)
);
CREATE INDEX IF NOT EXISTS readings_window ON readings (window_id);

CREATE TABLE IF NOT EXISTS features (
    window_id    bigint PRIMARY KEY,
    sensor       int NOT NULL,
    window_start timestamptz NOT NULL,
    mean         double precision,
    std          double precision,
    min          double precision,
    max          double precision,
    slope        double precision,   -- per minute, least squares
    p95          double precision,
    filled_frac  double precision,   -- share of the 60 minutes the gap filler made up
    n_samples    int
);
