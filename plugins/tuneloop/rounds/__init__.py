"""The round as data: the boxes its tasks pass (boxes, decision), where it starts (start), its
plan (plan), its datasets (datasets), its jobs (specs, checkpoint), the gate (gate), the ledger
(ledger) and the record written at its end (record)."""
