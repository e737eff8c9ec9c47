"""The worker's data plane: its file cache, its chunk server and its fetches (issue 13).

* :mod:`.cache`: the content-named cache on disk (levels, pins, reservations, LRU
  eviction under ``--disk``, atomic commits, read-only entries, the node's "forever"
  directory under a crash-safe lock);
* :mod:`.service`: the data thread (serves the cache to peers, fetches from peers, the
  manager or URLs, unpacks), driven by the agent through an inproc socket;
* :mod:`.gates`: the agent's side: which Calls messages wait for which files, pins per call.
"""
