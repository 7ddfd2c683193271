"""Models in a worker: where they come from (source), how they load (runtime, shared and prepared graphs),
where they live (the LRU by bytes) and how their calls are batched."""
