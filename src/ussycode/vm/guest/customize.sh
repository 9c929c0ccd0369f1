#!/bin/sh
# Turn the Debian or Ubuntu tree that mmdebstrap built at "$1" into the ussycode guest image.
# build_image() runs this as an mmdebstrap customize hook, so /dev, /proc and /sys are mounted
# inside "$1" and `chroot "$1"` runs the guest's own tools.
set -eu

root="$1"
guest="$(cd "$(dirname "$0")" && pwd)"
user=ussycode

echo "customize: boot agent"
install -D -m 0755 "$guest/ussycode_init.py" "$root/usr/local/lib/ussycode/ussycode_init.py"
install -D -m 0644 "$guest/ussycode-init.service" "$root/etc/systemd/system/ussycode-init.service"
chroot "$root" systemctl enable ussycode-init.service

echo "customize: user $user"
chroot "$root" useradd --create-home --shell /bin/bash --groups adm,systemd-journal "$user"
# "*" instead of useradd's locked "!": no password can match, and key logins are not refused.
chroot "$root" usermod --password '*' "$user"
chroot "$root" install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
install -m 0440 "$guest/sudoers" "$root/etc/sudoers.d/ussycode"
chroot "$root" visudo --check --quiet --file=/etc/sudoers.d/ussycode

echo "customize: sshd"
install -m 0644 "$guest/sshd_config" "$root/etc/ssh/sshd_config"
install -D -m 0644 "$guest/ssh-service.conf" "$root/etc/systemd/system/ssh.service.d/ussycode.conf"
# Every VM creates its own host keys at first boot (ussycode-init runs ssh-keygen).
rm -f "$root"/etc/ssh/ssh_host_*

echo "customize: units"
# Nothing in a VM needs these, and they cost boot time: the host configures the network on the
# kernel command line, the owner runs apt when needed, the console is the serial port (Debian's
# getty-static starts gettys on tty2 to tty6 when dbus is missing), and there is no GPU, EFI or
# device mapper to load modules for (the kernel loads them on first use).
chroot "$root" systemctl mask \
    apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
    dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service \
    systemd-network-generator.service systemd-resolved.service networking.service \
    getty@tty1.service getty-static.service modprobe@drm.service modprobe@efi_pstore.service modprobe@dm_mod.service
install -m 0644 "$guest/modprobe-blacklist.conf" "$root/etc/modprobe.d/ussycode-blacklist.conf"
install -D -m 0644 /dev/stdin "$root/etc/systemd/system.conf.d/ussycode.conf" <<'CONF'
# A VM is stopped by its host: do not wait 90 s for a service that ignores SIGTERM.
[Manager]
DefaultTimeoutStopSec=15s
CONF

echo "customize: power button"
install -D -m 0644 /dev/stdin "$root/etc/acpi/events/ussycode-power" <<'EVENT'
# QEMU's system_powerdown presses the ACPI power button: shut the VM down cleanly.
event=button/power.*
action=/usr/bin/systemctl poweroff
EVENT

echo "customize: files"
install -m 0644 "$guest/fstab" "$root/etc/fstab"
# ussycode-init sets the VM's own hostname at boot.
echo ussycode > "$root/etc/hostname"
# The build host's resolv.conf must not leak into the image. ussycode-init writes it at boot.
rm -f "$root/etc/resolv.conf"
: > "$root/etc/resolv.conf"
# C.UTF-8 is built into glibc, so it needs no locales package. pam_env reads this for SSH sessions.
echo LANG=C.UTF-8 > "$root/etc/default/locale"
# An empty machine-id makes systemd create a new one at each VM's first boot.
: > "$root/etc/machine-id"

echo "customize: initramfs"
install -m 0644 "$guest/initramfs.conf" "$root/etc/initramfs-tools/conf.d/ussycode.conf"
install -m 0644 "$guest/initramfs-modules" "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all

echo "customize: coding agents"
sh "$guest/agents/install.sh" "$root"
