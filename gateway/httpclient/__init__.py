"""The gateway's HTTP/1.1 keep-alive upstream client on asyncio + httptools (`LAYER_UPSTREAM_TRANSPORT=httptools`).

connection.py: one connection and the response parser (the one loop); pool.py: the bounded per-origin pool;
transport.py: the UpstreamTransport on top (routing by origin, request encoding, the one safe retry).
"""
