"""The agent: runs jobs on the devices attached to its host, whichever executor sent them."""
