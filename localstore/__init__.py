"""Layer's local Turbopuffer-compatible store (the offline upstream for the gateway and its tests).

Modules: app (RSGI routes, auth, faults), registry (namespaces, commit), writes (validate → effects),
query / ranking / filters / text (reads, BM25), state (rows, vector matrices, index lag),
storage (append-only log + snapshot), schema / values (types, float32 formatting), faults, errors.
Env: LOCALSTORE_API_KEY (only this bearer key accepted), LOCALSTORE_API_KEYS (key=org,...: one namespace space per org),
LOCALSTORE_INDEX_LAG_MS (simulated indexing lag),
LOCALSTORE_COMPACT_BYTES (log size that triggers a snapshot; default 64 MiB).
Never imports `gateway/`.
"""
