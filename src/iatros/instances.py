"""The start-up rule for several instances: refuse what would silently diverge.

``server.instances`` says how many instances serve one configuration behind a load
balancer. Each setting refused below works on one instance and quietly breaks a
cluster: an in-process cache (an invalidation reaches one instance; the same question
is answered from N caches), rate limits without Redis (the limit multiplies by the
number of instances), SQLite (keys, usage and audit per instance), a generated secret
(cache tags and audit keys differ per instance), an in-process job queue (a job dies
with its instance). A knowledge index that is not on a server is only warned about:
per-instance knowledge is a legitimate set-up when each instance serves its own
documents, but then a document ingested through one instance is not found through another.
"""

from __future__ import annotations


def check_instances(
    count: int,
    *,
    memory_cache: bool,
    redis_url: str | None,
    database_url: str | None,
    has_secret: bool,
    memory_jobs: bool,
) -> None:
    """Raise ValueError naming every setting that would diverge across ``count`` instances."""
    if count <= 1:
        return
    problems: list[str] = []
    if memory_cache:
        problems.append("cache.backend: memory (use redis)")
    if not redis_url:
        problems.append("no redis_url (rate limits and budgets would be per instance)")
    if not database_url or database_url.startswith("sqlite"):
        problems.append("no PostgreSQL database_url (keys, usage, audit per instance)")
    if not has_secret:
        problems.append("no secret_key (each instance would generate its own)")
    if memory_jobs:
        problems.append("jobs.backend: memory (jobs die with their instance)")
    if problems:
        raise ValueError(
            f"server.instances: {count} instances need shared state: " + "; ".join(problems)
        )


def instance_warnings(
    count: int, knowledge_on: bool, backend: str, qdrant_url: str | None
) -> list[str]:
    """What several instances allow but probably do not mean (logged at start)."""
    shared = backend not in ("embedded", "qdrant") or (
        backend == "qdrant" and qdrant_url is not None
    )
    if count > 1 and knowledge_on and not shared:
        return [
            f"knowledge.backend: {backend} is not on a server: each of the {count} "
            "instances searches only the documents that it ingested itself (use qdrant "
            "with qdrant_url to share them)"
        ]
    return []
