"""The sans-IO protocol core: no sockets, no asyncio, no subprocesses, no clock.

Every function that needs the time takes ``now`` (float seconds since the Unix epoch).
tests/test_sans_io.py parses these modules' imports and fails on banned ones.
"""
