-- Electoral districts (dapil): a contest of a Pemilu is held in districts that cut across the
-- administrative tree, each with its seats, the areas it covers and its own candidates; parties
-- are shared by a contest's districts. A contest without district rows is one district, its scope
-- (contests.toml). The constraints hold the rules a bad load must not slip past.
ALTER TABLE registry.contest ADD COLUMN kind text;
UPDATE registry.contest SET kind = id;  -- a reload sets it from the contests file
ALTER TABLE registry.contest
  ALTER COLUMN kind SET NOT NULL,
  ADD CHECK (kind IN ('ppwp', 'pdpr', 'pdpd', 'pdprdp', 'pdprdk', 'pkwkp', 'pkwkk')),
  ADD UNIQUE (id, kind);

CREATE TABLE registry.district (
  contest text NOT NULL,
  kind text NOT NULL,
  code text NOT NULL CHECK (code ~ '^[0-9]{2,6}$'),
  name text NOT NULL,
  seats smallint NOT NULL,
  PRIMARY KEY (contest, code),
  FOREIGN KEY (contest, kind) REFERENCES registry.contest (id, kind) ON DELETE CASCADE ON UPDATE CASCADE,
  -- DPR 3-10 seats a district, DPRD 3-12 (UU 7/2017), DPD 4; one president, governor, regent, mayor.
  CHECK (CASE kind
           WHEN 'pdpr' THEN seats BETWEEN 3 AND 10
           WHEN 'pdpd' THEN seats = 4
           WHEN 'pdprdp' THEN seats BETWEEN 3 AND 12
           WHEN 'pdprdk' THEN seats BETWEEN 3 AND 12
           ELSE seats = 1
         END)
);

CREATE TABLE registry.district_area (
  contest text NOT NULL,
  district text NOT NULL,
  area text NOT NULL REFERENCES registry.area (code),
  PRIMARY KEY (contest, area),  -- one district per area per contest
  FOREIGN KEY (contest, district) REFERENCES registry.district (contest, code) ON DELETE CASCADE
);
CREATE INDEX district_area_district ON registry.district_area (contest, district);

-- Nor may an area lie inside another area of the contest's districts (a kecamatan inside a
-- kabupaten/kota already covered), or a TPS would vote in two. Checked at commit, when the
-- whole map is there: each row looks up its ancestors only, which finds every such pair.
CREATE FUNCTION registry.district_area_nested() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  outer_area text;
BEGIN
  SELECT area INTO outer_area FROM registry.district_area
    WHERE contest = NEW.contest AND area = ANY (ARRAY[left(NEW.area, 2), left(NEW.area, 4), left(NEW.area, 6)])
      AND area <> NEW.area
    LIMIT 1;
  IF outer_area IS NOT NULL THEN
    RAISE EXCEPTION 'contest %: area % lies inside area %, already in a district', NEW.contest, NEW.area, outer_area
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER district_area_not_nested AFTER INSERT OR UPDATE ON registry.district_area
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION registry.district_area_nested();

-- A choice stands in one district (a candidate, a Pilkada pair: `district`), or in every district
-- of its contest within `region` (a party, ppwp's paslon: `district` NULL). A candidate names
-- its party. Ballot numbers are unique on a ballot: among the shared choices, among a
-- district's own, and among a party's candidates in a district.
ALTER TABLE registry.choice
  ADD COLUMN district text,
  ADD COLUMN party text,
  ADD COLUMN region text NOT NULL DEFAULT '' CHECK (region ~ '^([0-9]{2}|[0-9]{4})?$'),
  ADD FOREIGN KEY (contest, district) REFERENCES registry.district (contest, code) ON DELETE CASCADE,
  ADD FOREIGN KEY (contest, party) REFERENCES registry.choice (contest, id) ON DELETE CASCADE,
  ADD CHECK (party IS NULL OR district IS NOT NULL),
  DROP CONSTRAINT choice_contest_nomor_urut_key,
  ADD UNIQUE NULLS NOT DISTINCT (contest, district, party, nomor_urut);

-- Deleting a contest deletes its candidates through their party: an index, or each deleted row scans them all.
CREATE INDEX choice_party ON registry.choice (contest, party);

GRANT SELECT ON registry.district, registry.district_area TO suara_tally, suara_aggregate, suara_publish;
