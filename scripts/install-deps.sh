#!/usr/bin/env bash
# Installs the Debian packages the tests and the VM layer need, and makes sure
# the local PostgreSQL and RabbitMQ are running. Idempotent; quick when all
# is present already.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-utils passt debootstrap dosfstools mtools syslinux syslinux-common xorriso e2fsprogs fdisk zstd git ca-certificates iproute2)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	sudo_cmd=""
	[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
	$sudo_cmd apt-get update -q
	DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The store and queue tests run against the machine's own services.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
	pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
	rabbitmq-server -detached || true
	for _ in $(seq 1 60); do (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done
fi
