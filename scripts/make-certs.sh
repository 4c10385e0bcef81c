#!/usr/bin/env sh
# Make a local certificate authority, a broker (server) certificate and, optionally, vehicle (client)
# certificates for the MQTT TLS listener (8883), with openssl.
#
#   scripts/make-certs.sh [OUT_DIR] [HOSTNAME ...]
#   scripts/make-certs.sh emqx/certs broker.example.com      # production (mounted into EMQX by docker-compose.yml)
#   scripts/make-certs.sh var/certs                           # embedded stack: `make run` enables 8883 when present
#   CLIENTS="veh-001 veh-002" scripts/make-certs.sh emqx/certs # also client certificates (mutual TLS)
#   BROKER_UID=1000 scripts/make-certs.sh emqx/certs          # for Docker: EMQX runs as uid 1000
#
# Files: ca.pem + ca.key (keep ca.key offline in production), server.pem + server.key, <client>.pem/.key.
# Existing files are kept (delete them to re-issue). Keys are written with mode 0600.
#
# BROKER_UID: the broker in its container must read server.key, and the EMQX image runs as uid 1000 — not as you.
# The script then gives that uid, and only that uid, read access, in the safest way the caller can:
#   run as root           → chown the key to BROKER_UID (mode 0600);
#   run as BROKER_UID     → nothing to do;
#   run as any other user → an ACL entry for BROKER_UID (setfacl, Debian package `acl`; mode stays 0600);
#   no ACLs possible      → mode 0644, readable by every local user, with a warning on stderr: fix it with
#                           `sudo chown 1000 <dir>/server.key && sudo chmod 600 <dir>/server.key`.
# The directory itself becomes searchable by everyone (a+x) so the broker can reach the file; the other keys stay
# 0600. Whoever has uid 1000 on the host can read the key too: a bind mount shares numeric uids.
set -eu

OUT_DIR=${1:-emqx/certs}
[ $# -gt 0 ] && shift
HOSTS=${*:-}
DAYS=${DAYS:-825}
mkdir -p "$OUT_DIR"
umask 077

if [ ! -f "$OUT_DIR/ca.pem" ]; then
    openssl req -x509 -newkey rsa:3072 -sha256 -days 3650 -nodes \
        -keyout "$OUT_DIR/ca.key" -out "$OUT_DIR/ca.pem" \
        -subj "/O=Fleet backend/CN=Fleet local CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "created CA $OUT_DIR/ca.pem"
fi

san="DNS:localhost,DNS:emqx,IP:127.0.0.1,IP:::1"
for host in $HOSTS; do
    case "$host" in
        *[!0-9.]*) san="$san,DNS:$host" ;;
        *) san="$san,IP:$host" ;;
    esac
done

if [ ! -f "$OUT_DIR/server.pem" ]; then
    openssl req -newkey rsa:2048 -nodes -keyout "$OUT_DIR/server.key" -out "$OUT_DIR/server.csr" \
        -subj "/O=Fleet backend/CN=fleet-broker" 2>/dev/null
    printf "subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n" \
        "$san" > "$OUT_DIR/server.ext"
    openssl x509 -req -in "$OUT_DIR/server.csr" -CA "$OUT_DIR/ca.pem" -CAkey "$OUT_DIR/ca.key" \
        -CAcreateserial -days "$DAYS" -sha256 -extfile "$OUT_DIR/server.ext" -out "$OUT_DIR/server.pem" 2>/dev/null
    rm -f "$OUT_DIR/server.csr" "$OUT_DIR/server.ext"
    echo "created broker certificate $OUT_DIR/server.pem ($san)"
fi

for client in ${CLIENTS:-}; do
    [ -f "$OUT_DIR/$client.pem" ] && continue
    openssl req -newkey rsa:2048 -nodes -keyout "$OUT_DIR/$client.key" -out "$OUT_DIR/$client.csr" \
        -subj "/O=Fleet backend/CN=$client" 2>/dev/null
    printf "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n" > "$OUT_DIR/$client.ext"
    openssl x509 -req -in "$OUT_DIR/$client.csr" -CA "$OUT_DIR/ca.pem" -CAkey "$OUT_DIR/ca.key" \
        -CAcreateserial -days "$DAYS" -sha256 -extfile "$OUT_DIR/$client.ext" -out "$OUT_DIR/$client.pem" 2>/dev/null
    rm -f "$OUT_DIR/$client.csr" "$OUT_DIR/$client.ext"
    echo "created client certificate $OUT_DIR/$client.pem"
done
chmod 0644 "$OUT_DIR"/*.pem
chmod 0600 "$OUT_DIR"/*.key
if [ -n "${BROKER_UID:-}" ]; then
    key="$OUT_DIR/server.key"
    chmod a+x "$OUT_DIR"
    if [ "$(id -u)" = "$BROKER_UID" ]; then
        :
    elif [ "$(id -u)" = 0 ]; then
        chown "$BROKER_UID" "$key"
        echo "gave $key to uid $BROKER_UID (the broker)"
    elif command -v setfacl >/dev/null 2>&1 && setfacl -m "u:$BROKER_UID:r" "$key" 2>/dev/null; then
        echo "granted uid $BROKER_UID (the broker) read access to $key with an ACL"
    else
        chmod 0644 "$key"
        echo "WARNING: $key is now readable by every local user, because uid $BROKER_UID (the broker) must read" \
            "it and neither chown (needs root) nor an ACL (setfacl, package 'acl') was possible. Restrict it:" \
            "sudo chown $BROKER_UID '$key' && sudo chmod 600 '$key'" >&2
    fi
fi
