#!/usr/bin/env bash
# Install the packages the `slurm` tests start a private single-node cluster from (slurmctld,
# slurmd, slurm-client, munge; tests/slurm_cluster.py configures and starts them itself).
# Idempotent and quiet; never fails: without root or apt the slurm tests skip with the reason.
set -u
if command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-slurm: not root or no apt-get; the slurm tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >/tmp/setup-slurm.log 2>&1; then
    echo "setup-slurm: apt-get failed (see /tmp/setup-slurm.log); the slurm tests will skip" >&2
fi
exit 0
