"""Models in a worker: where they come from (source), how they load (runtime, shared and prepared graphs),
what they run on (providers), where they live (the LRU by bytes) and how their calls are batched."""
