"""Python clients for a kvlab cluster: `KV` (blocking) and `AsyncKV` (asyncio)."""

from kvlab.client.client import AsyncKV, KV
from kvlab.client.protocol import (
    BadAnswer,
    BadRequest,
    KeyNotFound,
    KVError,
    Result,
    Unavailable,
)

__all__ = ["KV", "AsyncKV", "Result", "KVError", "KeyNotFound", "Unavailable", "BadRequest",
           "BadAnswer"]
