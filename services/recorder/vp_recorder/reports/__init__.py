"""Call reports built from a call's transcript document: JSON call logs and Telegram messages."""
