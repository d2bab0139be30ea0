#!/usr/bin/env bash
# Recipe of the linux-test image: a small Debian bookworm guest that boots
# under TCG, reads only our NoCloud seed (cloud-init, datasource NoCloud) and
# runs sshd. `solstice image build linux-test` runs this script as root with
# OUT set to an empty folder; the image cache keys the result by a hash of
# this file, so edit it to rebuild. Writes OUT/disk.qcow2, OUT/vmlinuz and
# OUT/initrd.img (the guest is booted with QEMU's direct kernel boot).
set -euo pipefail
: "${OUT:?OUT must name the output folder}"
MIRROR=${SOLSTICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
work=$(mktemp -d "${TMPDIR:-/var/tmp}/solstice-linux-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# debootstrap's --include does not resolve virtual packages: cloud-init's
# python3-cffi-backend dependency is named explicitly.
debootstrap --variant=minbase \
	--include=linux-image-amd64,systemd-sysv,udev,openssh-server,cloud-init,python3-cffi-backend,git,ca-certificates,iproute2,sudo,procps \
	"$SUITE" "$root" "$MIRROR"

# cloud-init: NoCloud only, so it never probes a metadata address; only the
# modules a CI guest needs, so boot stays short under TCG.
cat > "$root/etc/cloud/cloud.cfg.d/90-solstice.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
datasource:
  NoCloud:
    fs_label: cidata
ssh_genkeytypes: [ ed25519 ]
ssh_deletekeys: true
disable_root: false
network:
  config: disabled
CFG
# Networking without cloud-init's renderer: DHCP on every ethernet link.
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/80-dhcp.network" <<'NET'
[Match]
Type=ether
[Network]
DHCP=yes
NET
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1 || true
# Faster boot: nothing waits for the network to be "online".
chroot "$root" systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
echo 'PermitRootLogin prohibit-password' > "$root/etc/ssh/sshd_config.d/solstice.conf"
echo 'UseDNS no' >> "$root/etc/ssh/sshd_config.d/solstice.conf"
echo "linux-test" > "$root/etc/hostname"
printf '/dev/vda / ext4 rw,relatime 0 1\n' > "$root/etc/fstab"
rm -f "$root"/etc/ssh/ssh_host_*
# Host keys: made by cloud-init at first boot (ssh_genkeytypes above).
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

cp "$root"/boot/vmlinuz-* "$OUT/vmlinuz"
cp "$root"/boot/initrd.img-* "$OUT/initrd.img"
chmod 0644 "$OUT/vmlinuz" "$OUT/initrd.img"
# The root file system, made from the folder without mounting anything.
mkfs.ext4 -q -F -L root -d "$root" "$work/root.img" 2G
qemu-img convert -q -f raw -O qcow2 "$work/root.img" "$OUT/disk.qcow2"
echo "linux-test image written to $OUT"
