"""Outbound calls: the call list and its policy (campaign), answering-machine detection (amd),
per-call variables in robot texts (template). Pure logic: gateway-fs drives it over the Event Socket."""
