#!/bin/sh
# Write the ussycode initramfs for kernel version "$2" of the guest tree "$1" to "$3".
# customize.sh runs this on the build host. The archive contains a static busybox, the virtio
# drivers with their dependencies in load order, and initramfs-init as /init. It is not
# compressed (about 2.4 MiB), so the kernel has nothing to decompress. The difference to a
# compressed archive was not measured.
set -eu

root="$1"
version="$2"
output="$3"
guest="$(cd "$(dirname "$0")" && pwd)"
# virtio_net is here so that eth0 exists before udev starts, and the boot agent configures it.
modules="virtio_pci virtio_blk virtio_net"

work="$root/tmp/ussycode-initramfs"
rm -rf "$work"
mkdir -p "$work/bin" "$work/dev" "$work/proc" "$work/sys" "$work/root"
install -m 0755 "$root/bin/busybox" "$work/bin/busybox"
install -m 0755 "$guest/initramfs-init" "$work/init"

# modprobe prints "insmod PATH" per module, dependencies first, and "builtin NAME" for drivers
# compiled into the kernel, which need nothing.
: > "$work/modules"
# shellcheck disable=SC2086 # $modules is a word list.
chroot "$root" modprobe --show-depends --set-version "$version" --all $modules |
    while read -r kind path; do
        [ "$kind" = insmod ] || continue
        # busybox insmod needs plain .ko files: Ubuntu compresses its modules with zstd.
        case "$path" in
            *.ko) plain="$path" decompress="" ;;
            *.ko.zst) plain="${path%.zst}" decompress="zstd -dcq" ;;
            *.ko.xz) plain="${path%.xz}" decompress="xz -dc" ;;
            *.ko.gz) plain="${path%.gz}" decompress="gzip -dc" ;;
            *) echo "make-initramfs: unknown module file type: $path" >&2; exit 1 ;;
        esac
        grep -qxF "$plain" "$work/modules" && continue
        mkdir -p "$(dirname "$work$plain")"
        if [ -z "$decompress" ]; then
            install -m 0644 "$root$path" "$work$plain"
        else
            # shellcheck disable=SC2086 # $decompress is a command with its options.
            chroot "$root" $decompress "$path" > "$work$plain"
        fi
        echo "$plain" >> "$work/modules"
    done
[ -s "$work/modules" ] || { echo "make-initramfs: no modules found for kernel $version" >&2; exit 1; }

(cd "$work" && find . -mindepth 1 | sort | chroot "$root" cpio --quiet -o -H newc -D /tmp/ussycode-initramfs) \
    > "$output"
echo "make-initramfs: wrote $(wc -c < "$output") bytes with $(wc -l < "$work/modules") modules"
rm -rf "$work"
