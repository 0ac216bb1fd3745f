"""Smoke test of the message-count benchmark: two talking calls through the whole phone path.

Counts are not timings, so the test can assert what the traffic must look like: each store's
consumer is handed only what that store keeps, and the lifecycle consumers never see the per-turn
reports and usage that moved to subjects of their own."""

from __future__ import annotations

import pytest

from bench.bench_phone_messages import measure, report


@pytest.mark.slow
@pytest.mark.e2e
async def test_each_consumer_is_handed_only_what_it_keeps(postgres_dsn: str, redis_url: str) -> None:
    traffic = await measure(2, 8.0, postgres_dsn, redis_url)

    assert traffic.turns >= 2 and "per turn" in report(traffic)
    assert traffic.published["vad.speech_ended"] >= 2 and traffic.published["provider.usage"] >= 2
    delivered = traffic.delivered_types
    # vad events and usage are delivered to the Postgres store and to no other store or stage
    for kind in ("vad.speech_ended", "provider.usage"):
        takers = {consumer for consumer, k in delivered if k == kind}
        assert takers == {"recorder_postgres"}, (kind, takers)
    # turn reports reach the stores that keep them, not the router's lifecycle consumer
    takers = {consumer for consumer, k in delivered if k == "turn.metrics"}
    assert takers == {"recorder_postgres", "recorder_redis", "recorder_nats_events"}, takers
    assert delivered[("prompt-router-lifecycle", "call.started")] >= 2
