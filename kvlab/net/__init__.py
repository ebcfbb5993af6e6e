"""The real-process driver: aiohttp servers that run `kvlab.core` over real sockets."""
