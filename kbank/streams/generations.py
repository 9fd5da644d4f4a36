"""Which generation the views serve: a pointer record on the compacted topic views.generation.

`bank replay recompute` writes a new generation's ledger and outcomes under
`<prefix>gen-<id>.`; `bank replay switch --generation <id>` points the views
at it (and `--generation live` back). Views workers read the pointer when
they start, so a switch takes effect as they restart; the engine keeps
deciding on the live topics.
"""
from __future__ import annotations

from dataclasses import replace

from kbank.streams import kafka, topics
from kbank.streams.client import read_topic
from kbank.streams.config import Settings

LIVE = "live"
_KEY = b"views"


def switch(settings: Settings, generation: str) -> None:
    topics.ensure_topics(settings)
    producer = kafka.producer(settings, kafka.TOOLS)
    producer.produce(settings.topic(topics.VIEWS_GENERATION), key=_KEY, value=generation.encode())
    if producer.flush(30) > 0:
        raise TimeoutError("the generation switch was not acknowledged")


def live_generation(settings: Settings, role: str = kafka.TOOLS,
                    group: str = "bank-reader") -> str:
    """The generation the views should serve (the last pointer record), `live` if none;
    read as `role` under one of its groups (the views read it when they start)."""
    current = LIVE
    for msg in read_topic(settings, settings.topic(topics.VIEWS_GENERATION), timeout_s=30,
                          role=role, group=group):
        if msg.key() == _KEY and msg.value():
            current = msg.value().decode()
    return current


def generation_settings(settings: Settings, generation: str) -> Settings:
    """Settings whose topics are the given generation's (`<prefix>gen-<id>.`)."""
    return replace(settings, topic_prefix=f"{settings.topic_prefix}gen-{generation}.")


def source_settings(settings: Settings, generation: str) -> Settings:
    """Settings whose ledger and outcomes topics are the generation's."""
    return settings if generation == LIVE else generation_settings(settings, generation)
