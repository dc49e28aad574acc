"""The read-only dashboard: shared panel queries, SVG charts, the `farm dashboard` server, seed data."""
