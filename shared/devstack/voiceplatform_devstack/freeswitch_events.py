"""What one ESL connection asked to receive: ``event``, ``nixevent``, ``noevents``, ``filter``, ``myevents``.

Matching follows mod_event_socket's ``event_handler``: ``ALL`` takes everything; a ``CUSTOM`` event
with a subclass needs that subclass listed after ``CUSTOM`` (case-sensitive; every word after
``CUSTOM`` is a subclass, even one that looks like an event name); filters are OR-ed header matches
(case-insensitive, ``/regex/``, ``-`` excludes); ``myevents`` keeps one channel's events.
"""

from __future__ import annotations

import re

from voiceplatform_devstack.freeswitch_wire import EVENT_NAMES, FsEvent, event_type


class Subscription:
    def __init__(self) -> None:
        self.events_on = False
        self.format = "plain"
        self.event_list: set[str] = set()
        self.custom: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        self.myevents = False
        self.session_uuid: str | None = None

    def wants(self, event: FsEvent) -> bool:
        if not self.events_on:
            return False
        send = "ALL" in self.event_list or (
            event.name in self.event_list
            and (event.name != "CUSTOM" or not event.subclass or event.subclass in self.custom)
        )
        if send and self.filters:
            send = self._filtered(event)
        if send and self.myevents:
            unique = event.get("Unique-ID")
            send = unique is not None and (self.session_uuid is None or unique == self.session_uuid)
        return send

    def _filtered(self, event: FsEvent) -> bool:
        """The filter loop of mod_event_socket's ``event_handler``."""
        send = False
        for name, value in self.filters:
            have = event.get(name)
            if have is None:
                continue
            comp, positive = value, True
            while comp and comp[0] in "+- ":
                positive = comp[0] == "+" if comp[0] != " " else positive
                comp = comp[1:]
            if send and positive:
                continue
            if value.startswith("/"):
                pattern = comp.strip("/")
                try:
                    match = re.search(pattern, have) is not None
                except re.error:
                    match = False
            else:
                match = have.lower() == comp.lower()
            if match:
                if not positive:
                    return False
                send = True
        return send

    def filter(self, rest: str) -> str:
        name = rest.lstrip(" ")
        name, sep, value = name.partition(" ")
        val: str | None = value if sep else None
        if name.lower() == "delete" and val is not None:
            name, sep, value = val.partition(" ")
            val = value if sep else None
            if name.lower() == "all":
                self.filters.clear()
            else:
                self.filters = [
                    (n, v)
                    for n, v in self.filters
                    if not (n.lower() == name.lower() and (val is None or v == val))
                ]
            return f"+OK filter deleted. [{name}][{val or ''}]"
        if val is not None:
            if name.lower() == "add":
                name, sep, value = val.partition(" ")
                val = value if sep else None
            self.filters.append((name, val or ""))
            return f"+OK filter added. [{name}]=[{val if val is not None else '(null)'}]"
        return "-ERR invalid syntax"

    def _tokens(self, cmd: str) -> list[str]:
        rest = cmd[5:]
        space = rest.find(" ")
        return rest[space + 1 :].split(" ") if space >= 0 else []

    def event(self, cmd: str) -> str:
        key_count, custom = 0, False
        for count, token in enumerate(self._tokens(cmd)):
            if count == 0 and token.lower() in ("xml", "plain", "json"):
                self.format = token.lower()
                continue
            if custom:
                self.custom.add(token)
                continue
            kind = event_type(token)
            if kind is None:
                continue
            key_count += 1
            self.event_list.add(kind)
            if kind == "ALL":
                self.event_list |= EVENT_NAMES
            elif kind == "CUSTOM":
                custom = True
        if not key_count:
            return "-ERR no keywords supplied"
        self.events_on = True
        return f"+OK event listener enabled {self.format}"

    def nixevent(self, cmd: str) -> str:
        key_count, custom = 0, False
        for token in self._tokens(cmd):
            if custom:
                self.custom.discard(token)
                continue
            kind = event_type(token)
            if kind is None:
                continue
            key_count += 1
            if kind == "CUSTOM":
                custom = True
            elif kind == "ALL":
                self.event_list.clear()
            else:
                if "ALL" in self.event_list:
                    self.event_list = set(EVENT_NAMES) - {"ALL"}
                self.event_list.discard(kind)
        if not key_count:
            return "-ERR no keywords supplied"
        self.events_on = True
        return "+OK events nixed"

    def noevents(self) -> str:
        if not self.events_on:
            return "-ERR not listening for events"
        self.events_on = False
        self.event_list.clear()
        self.custom.clear()
        return "+OK no longer listening for events"
