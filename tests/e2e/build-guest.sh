#!/usr/bin/env bash
# Builds the tiny test guest of the e2e tier from Debian packages:
#   OUT/vmlinux    Debian's kernel, decompressed (QEMU boots a plain ELF
#                  directly, ~2.7 s faster per boot than the bzImage)
#   OUT/initrd.gz  busybox-static, virtio_net and its dependencies, the
#                  sgcheck prober and /init (tests/e2e/guest/init)
#
# Usage: tests/e2e/build-guest.sh [OUT]   (default: build/e2e-guest)
#
# Downloads only when OUT has no kernel yet (apt-get download, from the
# machine's Debian mirrors); later runs reuse OUT and only rebuild the
# initramfs when /init or the prober changed. Needs: apt-get, dpkg-deb, cc
# with static glibc, cpio, gzip, xz.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../../build/e2e-guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEBS=$OUT/debs
ROOT=$OUT/pkgroot

say() { echo "build-guest: $*" >&2; }

# Downloaded packages: the kernel that linux-image-amd64 currently points at,
# and busybox-static. A .complete marker guards against a half download.
if [[ ! -f $DEBS/.complete ]]; then
  rm -rf "$DEBS" "$ROOT"
  mkdir -p "$DEBS"
  if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    say "apt has no package lists yet; running apt-get update"
    apt-get update -qq
  fi
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [[ -z $kpkg ]]; then
    say "cannot find the kernel package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
    exit 1
  fi
  say "downloading $kpkg and busybox-static into $DEBS"
  (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg" busybox-static)
  touch "$DEBS/.complete"
fi

if [[ ! -f $ROOT/.complete ]]; then
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
  touch "$ROOT/.complete"
fi

# vmlinux: the bzImage carries an xz stream (magic FD 37 7A 58 5A 00);
# decompress from there, ignoring what follows the stream.
if [[ ! -f $OUT/vmlinux ]]; then
  vmlinuz=$(ls "$ROOT"/boot/vmlinuz-* | head -n 1)
  offset=$(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$vmlinuz" | head -n 1 | cut -d: -f1)
  if [[ -z $offset ]]; then
    say "$vmlinuz has no xz stream; cannot make a vmlinux (the guest would still boot from vmlinuz, slower)"
    exit 1
  fi
  # (process substitution: tail's SIGPIPE once xz has its stream is no error)
  xz -dc --single-stream < <(tail -c +"$((offset + 1))" "$vmlinuz") >"$OUT/vmlinux.tmp"
  mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
  say "kernel: $OUT/vmlinux ($(basename "$vmlinuz"))"
fi

# The initramfs is cheap to make: rebuild it whenever its inputs changed.
inputs=("$HERE/guest/init" "$HERE/guest/sgcheck.c" "$0")
fresh=1
[[ -f $OUT/initrd.gz ]] || fresh=0
for f in "${inputs[@]}"; do
  [[ $fresh == 1 && $f -nt $OUT/initrd.gz ]] && fresh=0
done
if [[ $fresh == 1 ]]; then
  exit 0
fi

STAGE=$OUT/initramfs
rm -rf "$STAGE"
mkdir -p "$STAGE"/{bin,sbin,proc,sys,dev,tmp,etc,lib/modules,usr/bin,usr/sbin}
cp "$ROOT/bin/busybox" "$STAGE/bin/busybox"
cp "$HERE/guest/init" "$STAGE/init"
chmod 755 "$STAGE/init"
cc -static -O2 -Wall -Wextra -o "$STAGE/bin/sgcheck" "$HERE/guest/sgcheck.c"

# virtio_net and everything it needs, in load order. The package ships no
# modules.dep (depmod makes it at install time), so read each module's
# "depends=" from its .modinfo section: NUL-separated strings in the file.
moddir=$(ls -d "$ROOT"/lib/modules/* | head -n 1)
unpack_module() { # FILE -> stdout
  case $1 in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) cat "$1" ;;
  esac
}
declare -A seen=()
order=()
add_module() {
  local name=$1 file deps
  [[ -n ${seen[$name]:-} ]] && return 0
  seen[$name]=1
  file=$(find "$moddir/kernel" \( -name "$name.ko" -o -name "$name.ko.*" -o -name "${name//_/-}.ko" \
    -o -name "${name//_/-}.ko.*" \) -print -quit)
  if [[ -z $file ]]; then
    say "$name is not a module of this kernel; assuming it is built in"
    return 0
  fi
  unpack_module "$file" >"$STAGE/lib/modules/$name.ko"
  deps=$(tr '\0' '\n' <"$STAGE/lib/modules/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' ')
  for d in $deps; do add_module "${d//-/_}"; done
  order+=("$name")
}
# pvpanic: a guest kernel panic reaches libvirt as "crashed".
for name in virtio_pci virtio_net pvpanic_mmio; do add_module "$name"; done
printf '%s.ko\n' "${order[@]}" >"$STAGE/lib/modules/load-order"

(cd "$STAGE" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -9 >"$OUT/initrd.gz.tmp")
mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
say "initramfs: $OUT/initrd.gz (modules: $(tr '\n' ' ' <"$STAGE/lib/modules/load-order"))"
