#!/bin/sh
# Make the compose stack's secrets once: a random Redis password (secrets/redis.conf, read
# by redis-server), the broker URL carrying it (secrets/broker-url, read by worker, beat and
# flower through SCANFLEET_BROKER_URL_FILE), a Flower login (secrets/flower.py) and, for the
# objectstore profile, MinIO's root login and the scanfleet S3 user's keys.
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
# The objectstore profile: MinIO's root login (minio-init only) and the scanfleet user's
# keys, in the shell `NAME=value` form the workers' entry command exports.
if [ ! -f secrets/minio-root-password ]; then
  printf 'root-%s\n' "$(rand | cut -c1-12)" > secrets/minio-root-user
  rand > secrets/minio-root-password
  printf 'AWS_ACCESS_KEY_ID=scanfleet-%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
    "$(rand | cut -c1-12)" "$(rand)" > secrets/s3-credentials
fi
chmod 0644 secrets/redis.conf secrets/broker-url secrets/flower.py \
  secrets/minio-root-user secrets/minio-root-password secrets/s3-credentials
echo "secrets ready in $(pwd)/secrets (Flower login: see secrets/flower.py)"
