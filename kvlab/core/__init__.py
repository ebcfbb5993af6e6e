"""The protocol, free of IO.

Nothing in this package touches sockets, files, threads, asyncio or the wall clock: time
comes in as an argument and every decision goes out as an effect. The real cluster
(`kvlab.net`) and the simulator (`kvlab.sim`) drive the very same code.
"""
