# Sourced by tools/device/*.sh on a lent GPU machine (repo root): unpack the carried Debian redis-server and wrk
# (.carry/debs/, fetched by tools/device/gpu_serving_carry.sh) under /tmp/debs, never /, and put them on PATH.
# Debian bookworm's builds need glibc >= 2.34; the libraries they bring are used by these two programs only.
mkdir -p /tmp/debs/bin
for deb in .carry/debs/*.deb; do dpkg -x "$deb" /tmp/debs || return 1; done
LIBS=/tmp/debs/usr/lib/x86_64-linux-gnu:/tmp/debs/lib/x86_64-linux-gnu
for tool in redis-server wrk; do
  printf '#!/bin/bash\nLD_LIBRARY_PATH=%s exec /tmp/debs/usr/bin/%s "$@"\n' "$LIBS" "$tool" > "/tmp/debs/bin/$tool"
  chmod +x "/tmp/debs/bin/$tool"
done
export PATH="/tmp/debs/bin:/tmp/site/bin:$PATH"
WRK_VERSION=$(wrk --version 2>&1 | head -n 1 || true)  # wrk --version exits 1 after printing its version
redis-server --version && [[ $WRK_VERSION == wrk* ]] || { echo "carried redis-server / wrk do not run: $WRK_VERSION"; return 1; }
echo "$WRK_VERSION"
