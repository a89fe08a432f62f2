"""Remote profiles: download (HTTP(S)), archives (manifest, vendoring, deterministic
re-archiving) and fetch (once per run or per worker cache, pinned by sha256).
"""
