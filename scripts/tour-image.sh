#!/usr/bin/env bash
# Builds the small offline image the README tour uses, `corral-tour/httpd:1`: busybox httpd
# serving a page that names its color. No registry is needed. Usage: scripts/tour-image.sh
# Installs what the tour uses when it is missing: busybox-static (the image), dig and curl.
set -euo pipefail
missing=()
command -v busybox >/dev/null && dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v dig >/dev/null || missing+=(dnsutils)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tour-image: missing ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2; exit 1
  fi
  echo "tour-image: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/www" "$root/tmp"
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh httpd wget nslookup sleep cat echo ls rm mkdir ip hostname; do ln -s busybox "$root/bin/$a"; done
# The page says which color answered: `docker run -e COLOR=green ...`
cat > "$root/bin/serve" <<'EOS'
#!/bin/sh
mkdir -p /www && echo "hello from ${COLOR:-default} on $(hostname)" > /www/index.html && echo ok > /www/healthz
exec httpd -f -p "${PORT:-80}" -h /www
EOS
chmod +x "$root/bin/serve"
tar -C "$root" -c . | docker import -c 'CMD ["/bin/serve"]' -c 'EXPOSE 80' - corral-tour/httpd:1 >/dev/null
echo "built corral-tour/httpd:1"
