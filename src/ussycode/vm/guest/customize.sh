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
# The unit imports the agent as a module, so Python loads this bytecode instead of compiling
# the source at every boot (and recompiles it if the source is edited in the guest).
chroot "$root" python3 -m compileall -q /usr/local/lib/ussycode
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

# pam_motd runs the /etc/update-motd.d scripts at every login, which cost 1.5 to 6 s of each SSH
# session's start under TCG emulation on a busy host. sshd_config already has PrintMotd no.
sed -i '/pam_motd\.so/d' "$root/etc/pam.d/sshd"

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
# Also masked: kernel file systems for debugging, tracing, huge pages and binfmt_misc, which a
# user can still mount by hand, and preloading of configfs, fuse and loop, which the kernel
# loads on first use. Each of these jobs competes for the CPU with sshd's start.
chroot "$root" systemctl mask \
    sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    modprobe@configfs.service modprobe@fuse.service modprobe@loop.service
# Generators run at every boot before any unit starts. These ones serve encrypted, verity and
# integrity volumes, GPT auto-mounts, hibernation, rc.local, SysV init scripts (every service in
# the image has a native unit), offline updates and the systemd.run= and debug kernel options.
# The fstab and getty generators stay.
mkdir -p "$root/etc/systemd/system-generators"
for generator in cryptsetup debug gpt-auto hibernate-resume integritysetup rc-local run \
    system-update sysv veritysetup; do
    ln -sf /dev/null "$root/etc/systemd/system-generators/systemd-$generator-generator"
done
# sshd starts before systemd-tmpfiles-setup creates /run/nologin ("System is booting up") and
# may accept logins before systemd-user-sessions removes it, which pam_nologin would reject.
ln -sf /dev/null "$root/etc/tmpfiles.d/systemd-nologin.conf"
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
# The host boots the initramfs of make-initramfs.sh. The initrd that initramfs-tools made when
# the kernel was installed stays in /boot for the guest's own use.
for kernel in "$root"/boot/vmlinuz-*; do
    version="${kernel##*/vmlinuz-}"
    sh "$guest/make-initramfs.sh" "$root" "$version" "$root/boot/ussycode-initrd.img-$version"
done

echo "customize: coding agents"
sh "$guest/agents/install.sh" "$root"
