-- registry owns this schema: the reference data every service reads — the
-- Kemendagri area hierarchy, the TPS list, the contests and their choices.
-- `suara registry load` replaces it all in one transaction; nothing else writes it.
CREATE SCHEMA IF NOT EXISTS registry;

CREATE TABLE registry.area (
  code text PRIMARY KEY CHECK (code ~ '^([0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{10})$'),
  parent text REFERENCES registry.area (code),   -- NULL for provinces
  level smallint NOT NULL CHECK (level BETWEEN 1 AND 4),  -- 1 provinsi, 2 kab/kota, 3 kecamatan, 4 desa
  name text NOT NULL,
  -- The level is the code's length, and a parent is the code's own prefix.
  CHECK (length(code) = (ARRAY[2, 4, 6, 10])[level]),
  CHECK ((level = 1) = (parent IS NULL)),
  CHECK (parent IS NULL OR starts_with(code, parent))
);
CREATE INDEX area_parent ON registry.area (parent);

CREATE TABLE registry.tps (
  code text PRIMARY KEY CHECK (code ~ '^[0-9]{13}$'),
  desa text NOT NULL REFERENCES registry.area (code),
  number smallint NOT NULL CHECK (number BETWEEN 1 AND 999),
  dpt integer NOT NULL CHECK (dpt BETWEEN 1 AND 600),
  -- A TPS code is its desa's code and its 3-digit number.
  CHECK (code = desa || lpad(number::text, 3, '0'))
);
CREATE INDEX tps_desa ON registry.tps (desa);

CREATE TABLE registry.contest (
  id text PRIMARY KEY,
  name text NOT NULL,
  scope text NOT NULL DEFAULT '' CHECK (scope ~ '^([0-9]{2}|[0-9]{4})?$'),  -- '' national, else the province/kabupaten code it is held in
  max_voters_per_tps integer NOT NULL CHECK (max_voters_per_tps > 0)
);

CREATE TABLE registry.choice (
  contest text NOT NULL REFERENCES registry.contest (id) ON DELETE CASCADE,
  id text NOT NULL,
  nama text NOT NULL,
  nomor_urut integer NOT NULL,
  warna text NOT NULL CHECK (warna ~ '^#[0-9A-Fa-f]{6}$'),
  PRIMARY KEY (contest, id),
  UNIQUE (contest, nomor_urut)
);

CREATE TABLE registry.load (   -- one row per `suara registry load`, newest last
  id bigserial PRIMARY KEY,
  loaded_at timestamptz NOT NULL DEFAULT now(),
  synthetic_scale double precision,
  seed bigint,
  areas integer NOT NULL,
  tps integer NOT NULL,
  contests integer NOT NULL
);
