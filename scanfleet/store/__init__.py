"""The store: everything scanfleet keeps in Redis, and the only package that imports `redis`.

    store.client   connect(), the one error wrapper (`guarded`: RedisError -> StoreUnavailable)
    store.state    run state: `RunStore` (Redis) and `MemoryRunState` (in process)
    store.slots    per-cluster slots: `RedisSlots` (leases) and `LocalSlots` (semaphores)
    store.locks    the sweep lock, with its `LOCK_TTL` / `PENDING_TTL`
    store.pins     a run's pinned profile sha256, in its plan (first writer wins)
    store.files    the results directory: run ids, atomic JSON files, their `Modes`

All Lua lives in these modules; every Redis call goes through `client.guarded`, so a Redis
outage surfaces as the retryable `StoreUnavailable` and never as a scan error. Never stores
a token or kubeconfig content: keys and values name runs, scans and contexts only.
"""
