"""The round as data: its boxes, plan, start, job specs, gate, ledger and record."""
