#!/usr/bin/env bash
# Turn a fresh Raspberry Pi OS / Debian / Ubuntu into a running wattchecker-client service.
#
#   sudo ./install.sh --address 00:0C:BF:XX:XX:XX --channel 6
#
# Safe to run again: it upgrades the code, keeps config.yaml and the data.
# Options:
#   --address ADDR       the meter: MAC, /dev/rfcommN, tcp://HOST:PORT or sim://
#                        (written into a new config.yaml only)
#   --channel N          its RFCOMM channel (likewise)
#   --model M            btwattch1 (default) or btwattch2 (an RS-BTWATTCH2 over BLE; likewise)
#   --prefix DIR         where to install (default /opt/wattchecker-client)
#   --root DIR           install into DIR as if it were / (for packaging and tests):
#                        no apt, no user, no systemctl
#   --python PATH        the Python to build the venv from (default /usr/bin/python3,
#                        which has Bluetooth sockets)
#   --no-start           install and enable, but do not start now
set -euo pipefail

prefix=/opt/wattchecker-client
root=/
python=/usr/bin/python3
address=""
channel=""
model=""
start=yes
user=wattchecker
src=$(cd "$(dirname "$0")" && pwd)

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

# The unit starts after time-sync.target. That target means "synchronised" only
# when a unit waits for it: with systemd-timesyncd, systemd-time-wait-sync.service.
# Its own wait has no limit; ours caps it, so a Pi without network still starts.
wait_sync_timeout=90
wait_sync_dropin() {
    local dir="$root/etc/systemd/system/systemd-time-wait-sync.service.d"
    mkdir -p "$dir"
    printf '%s\n' "# Installed by wattchecker-client's install.sh: without network, give up" \
        "# waiting for the first synchronisation after this long (the default waits forever)." \
        "[Service]" "TimeoutStartSec=${wait_sync_timeout}s" > "$dir/wattchecker-client.conf"
}
enable_wait_sync() {
    if systemctl is-enabled --quiet systemd-timesyncd.service 2>/dev/null; then
        systemctl enable --quiet systemd-time-wait-sync.service
        say "enabled systemd-time-wait-sync.service: at boot the service starts once systemd-timesyncd" \
            "has synchronised the clock, or after ${wait_sync_timeout} s without network"
    else
        say "systemd-timesyncd is not the time service here; with chrony, enable chrony-wait.service" \
            "so that the service starts after the clock is synchronised"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --address) address=${2:?--address needs a value}; shift 2 ;;
        --channel) channel=${2:?--channel needs a value}; shift 2 ;;
        --model) model=${2:?--model needs a value}; shift 2 ;;
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        --root) root=${2:?--root needs a value}; shift 2 ;;
        --python) python=${2:?--python needs a value}; shift 2 ;;
        --no-start) start=no; shift ;;
        -h|--help) sed -n '2,/^set -euo pipefail$/{/^set /d;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# Checked before anything is touched: the values go into sed expressions and a config file.
if [ -n "$address" ] && ! [[ "$address" =~ ^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$ ]] \
        && ! [[ "$address" =~ ^/dev/[A-Za-z0-9_]+$ ]] \
        && ! [[ "$address" =~ ^tcp://[A-Za-z0-9.-]+:[0-9]{1,5}$ ]] && [ "$address" != "sim://" ]; then
    die "--address $(printf %q "$address"): not a Bluetooth MAC (00:0C:BF:12:34:56), a tty (/dev/rfcomm0), tcp://HOST:PORT or sim://"
fi
if [ -n "$channel" ] && ! [[ "$channel" =~ ^([1-9]|[12][0-9]|30)$ ]]; then
    die "--channel $(printf %q "$channel"): must be a number from 1 to 30"
fi
case "$model" in ""|btwattch1|btwattch2) ;; *) die "--model $(printf %q "$model"): must be btwattch1 or btwattch2" ;; esac
[[ "$prefix" =~ ^/[A-Za-z0-9._/-]*$ ]] || die "--prefix must be an absolute path of letters, digits and ._-/"
root=${root%/}
target="$root$prefix"
system=no
[ -z "$root" ] && system=yes

if [ "$system" = yes ]; then
    [ "$(id -u)" = 0 ] || die "run as root (sudo ./install.sh ...)"
    if command -v apt-get >/dev/null; then
        say "installing system packages (python3-venv, bluez)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv bluez >/dev/null
    fi
    if ! getent passwd "$user" >/dev/null; then
        say "creating system user $user"
        adduser --system --group --home "$prefix" --no-create-home --shell /usr/sbin/nologin "$user" >/dev/null
    fi
    getent group dialout >/dev/null && usermod -aG dialout "$user"
fi

"$python" -c 'import sys; assert sys.version_info >= (3, 9)' 2>/dev/null \
    || die "$python is missing or older than Python 3.9"
if ! "$python" -c 'import socket; socket.AF_BLUETOOTH' 2>/dev/null; then
    say "warning: $python has no Bluetooth sockets; only tty (/dev/rfcommN) and tcp:// addresses will work"
fi

say "installing into $target"
mkdir -p "$target/log"
cp "$src/README.md" "$src/config_sample.yaml" "$target/"
cp -r "$src/docs" "$target/"  # the README's linked pages
[ -x "$target/venv/bin/python" ] || "$python" -m venv "$target/venv"
# Extras: bigquery for uploads, http for the live page and /metrics (prometheus-client, ~0.5 MB),
# influxdb (no library: the standard library speaks line protocol).
# Built from a private copy: setuptools writes build/ and *.egg-info next to setup.py, and two
# installs from one checkout at once (or a root install in a user's checkout) would share them.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$src/setup.py" "$src/pyproject.toml" "$src/README.md" "$src/wattchecker_client" "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
"$target/venv/bin/pip" install -q --disable-pip-version-check --upgrade "$stage[bigquery,http,mqtt,ble,influxdb]"

if [ ! -e "$target/config.yaml" ]; then
    say "writing $target/config.yaml from the sample"
    sed_args=()
    [ -n "$address" ] && sed_args+=(-e "s|\"00:0C:BF:XX:XX:XX\"|\"$address\"|")
    [ -n "$channel" ] && sed_args+=(-e "s|^  channel: 6$|  channel: $channel|")
    # An RS-BTWATTCH2 has no RFCOMM channel and no start argument: their lines go.
    [ -n "$model" ] && sed_args+=(-e "s|^  model: btwattch1$|  model: $model|")
    [ "$model" = btwattch2 ] && sed_args+=(-e "/^  channel: /d" -e "/^  start_argument: /d")
    if [ ${#sed_args[@]} -gt 0 ]; then
        sed "${sed_args[@]}" "$src/config_sample.yaml" > "$target/config.yaml"
    else
        cp "$src/config_sample.yaml" "$target/config.yaml"
    fi
else
    say "keeping the existing $target/config.yaml"
fi

mkdir -p "$root/etc/systemd/system"
sed "s|/opt/wattchecker-client|$prefix|g" "$src/wattchecker_client.service" \
    > "$root/etc/systemd/system/wattchecker_client.service"
wait_sync_dropin

if [ "$system" = no ]; then
    say "done (into $root: no user, no systemctl; where systemd-timesyncd keeps the time," \
        "also run: systemctl enable systemd-time-wait-sync.service)"
    exit 0
fi

chown -R "$user:$user" "$target/log"
chown root:"$user" "$target/config.yaml"
chmod 0640 "$target/config.yaml"
systemctl daemon-reload
systemctl enable wattchecker_client.service >/dev/null
enable_wait_sync
if ! "$target/venv/bin/wattchecker-client" check-config --config "$target/config.yaml" >/dev/null; then
    "$target/venv/bin/wattchecker-client" check-config --config "$target/config.yaml" || true
    say "edit $prefix/config.yaml (at least device.address), then: sudo systemctl restart wattchecker_client"
    exit 0
fi
if [ "$start" = yes ]; then
    systemctl restart wattchecker_client.service
    say "running: systemctl status wattchecker_client; data in $prefix/log"
else
    say "enabled; start it with: sudo systemctl start wattchecker_client"
fi
