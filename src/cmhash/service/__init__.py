"""The search service over the indexes that ``dvc repro`` writes (docs/search.md):

- :mod:`.search_service`: the indexes on disk, the encoder of queries, and answering a batch of
  queries;
- :mod:`.batching`: concurrent HTTP queries gathered into batches;
- :mod:`.server`: the HTTP API and the web page (FastAPI);
- :mod:`.cli`: ``cmhash search``, one query from the command line.
"""
