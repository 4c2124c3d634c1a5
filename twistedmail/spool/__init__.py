"""The queue (the seed's Spool): the store, the runner that delivers from it."""
