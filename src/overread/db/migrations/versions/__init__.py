"""The revisions, oldest first: ``r0001_baseline`` is the schema as first versioned."""
