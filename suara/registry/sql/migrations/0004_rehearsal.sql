-- A rehearsal (gladi, simulasi) is an election of its own, in a database of its own: marked here at
-- `suara registry load --rehearsal`, so that publish shows every file and page of it as SIMULASI and
-- `suara rehearsal wipe` may erase it. A real election's database is never marked.
ALTER TABLE registry.load ADD COLUMN rehearsal boolean NOT NULL DEFAULT false;
