-- Photos leave PostgreSQL: their bytes go to the photo store (SUARA_PHOTO_STORE, a directory or a bucket)
-- before the form that lists them commits, and a row keeps only the hash, type and size. Rows written
-- before keep their bytes and are still served from them; dropping NOT NULL rewrites no row.
ALTER TABLE tally.photo ALTER COLUMN content DROP NOT NULL;
