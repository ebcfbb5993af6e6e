"""The real-process driver: the proxy and node servers that run `kvlab.core` over real sockets."""
