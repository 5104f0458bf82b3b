"""The node agent: pulls verified releases from any upstream and serves them to a centre."""
