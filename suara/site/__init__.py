"""The published site as its readers see it: the layout of its files (docs/layout.md), which publish writes
and auditors, the load test and the recap tools read, and the audit of the chain heads it carries."""
