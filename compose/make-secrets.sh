#!/bin/sh
# Make the compose stack's secrets once: a random Redis password (secrets/redis.conf, read
# by redis-server), the broker URL carrying it (secrets/broker-url, read by worker, beat and
# flower through SCANFLEET_BROKER_URL_FILE) and a Flower login (secrets/flower.py).
# The directory is 0700 so other users of this host cannot read the files; the files are
# 0644 because Compose bind-mounts them as they are and the containers run as uid 10001.
# Existing files are kept: delete secrets/ to rotate (then restart the whole stack).
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
chmod 0700 secrets
rand() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
if [ ! -f secrets/redis.conf ]; then
  password=$(rand)
  printf 'requirepass %s\n' "$password" > secrets/redis.conf
  printf 'redis://:%s@redis:6379/0\n' "$password" > secrets/broker-url
fi
if [ ! -f secrets/flower.py ]; then
  printf 'basic_auth = ["admin:%s"]\n' "$(rand)" > secrets/flower.py
fi
chmod 0644 secrets/redis.conf secrets/broker-url secrets/flower.py
echo "secrets ready in $(pwd)/secrets (Flower login: see secrets/flower.py)"
