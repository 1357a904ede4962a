"""The election-night simulator: `suara loadtest` drives a running suara like the night of a count.

It reads the registry from the published site, enrolls virtual KPPS devices for a sample of the
TPS, submits their C.Hasil forms through the client SDK on a time-compressed arrival curve with
the faults of a real night, watches the site, and at the end checks every published totals file
against its own oracle of what tally acknowledged.
"""
