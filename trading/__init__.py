"""The trading assistant's domain on top of the audit store: its trade
setups (with revisions) and the events it saves (trading/setups.py)."""
