"""Signed links that work without signing in: one-click unsubscribe, and a notice's download-everything script.

An HMAC-SHA256 over what the link acts on, with the purpose in the signed text, so that a signature made for one
subscription (or one purpose) is worth nothing for another.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlencode


class Signer:
    def __init__(self, secret: str, public_url: str) -> None:
        self._key = secret.encode()
        self.public_url = public_url.rstrip("/")

    def sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def verify(self, purpose: str, value: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(purpose, value), signature)

    def unsubscribe_url(self, subscription_ids: Iterable[int]) -> str:
        """The link that ends these subscriptions (a digest's covers each of its subscriptions)."""
        ids = ",".join(str(i) for i in sorted(set(subscription_ids)))
        return f"{self.public_url}/v1/unsubscribe?" + urlencode({"s": ids, "sig": self.sign("unsubscribe", ids)})

    def download_url(self, message_key: str) -> str:
        """The download-everything script of one email's files."""
        query = urlencode({"sig": self.sign("download", message_key)})
        return f"{self.public_url}/v1/notices/{message_key}/download-script?{query}"


def parse_ids(text: str) -> list[int]:
    """``"3,7"`` -> ``[3, 7]``; ValueError for anything else."""
    ids = [int(part) for part in text.split(",")]
    if not ids or any(i < 1 for i in ids) or len(ids) > 1000:
        raise ValueError("not a list of subscription ids")
    return ids
