"""The human review queue: escalations and approvals share one item model.

``build_review_desk`` builds it from the settings; :class:`ReviewDesk` is what the chat
service (escalations), the API and the CLI use.
"""

from __future__ import annotations

from iatros.config import ConfigError, Settings
from iatros.governance.service import Governance
from iatros.knowledge import KnowledgeBase
from iatros.reviews.desk import ReviewDesk
from iatros.reviews.queue import NewReview, ReviewFilter, ReviewQueue
from iatros.reviews.webhooks import Webhooks, sign, verify_signature

__all__ = [
    "NewReview",
    "ReviewDesk",
    "ReviewFilter",
    "ReviewQueue",
    "Webhooks",
    "build_review_desk",
    "sign",
    "verify_signature",
]


def build_review_desk(
    settings: Settings, governance: Governance, kb: KnowledgeBase | None
) -> ReviewDesk:
    hook = settings.reviews.webhook
    if hook.url and hook.secret is None:
        raise ConfigError(
            "reviews.webhook.secret is required with reviews.webhook.url: the receiver "
            "checks the x-iatros-signature header with it"
        )
    secret = hook.secret.get_secret_value().encode() if hook.secret else b""
    webhooks = Webhooks(
        governance.db,
        url=hook.url,
        secret=secret,
        max_attempts=hook.max_attempts,
        backoff_base_s=hook.backoff_base_s,
        backoff_max_s=hook.backoff_max_s,
        timeout_s=hook.timeout_s,
        poll_interval_s=hook.poll_interval_s,
    )
    queue = ReviewQueue(governance.db, governance, webhooks, sla_hours=settings.reviews.sla_hours)
    return ReviewDesk(queue, kb)
