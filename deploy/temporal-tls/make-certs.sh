#!/bin/sh
# Certificates for mTLS between compose's services and Temporal (deploy/compose.temporal-mtls.yml):
# a private CA, the server's certificate (named `temporal`, the name every client dials and checks;
# also localhost and 127.0.0.1 for its own healthcheck) and one client certificate for the API, the
# workers, the Web UI and the namespace job. Writes ca.pem, server.pem/.key, client.pem/.key into
# the folder given (default: certs/ beside this script), keeping any that exist. The CA's key stays
# there too: move it offline once the certificates are made. Renew by deleting the files and running
# it again, then `docker compose ... up -d --force-recreate`.
set -eu
out=${1:-$(dirname "$0")/certs}
days=${TAKEBACK_TLS_DAYS:-825}
mkdir -p "$out"
cd "$out"
if [ ! -f ca.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 3650 \
        -subj "/CN=takeback Temporal CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
issue() {  # name, subject CN, extended key usage, subjectAltName
    [ -f "$1.pem" ] && return 0
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$3" "$4" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days "$days" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
# The server presents this one to clients and, between its own services, as a client too.
issue server temporal serverAuth,clientAuth DNS:temporal,DNS:localhost,IP:127.0.0.1
issue client takeback-client clientAuth DNS:takeback-client
# Readable by the containers' own users (the Temporal images and takeback's run as their own uids):
# the folder is what isolates them, mounted only into the services that talk to Temporal.
chmod 0644 ca.pem server.pem client.pem server.key client.key
chmod 0600 ca.key
echo "certificates in $(pwd): ca.pem, server.pem/.key (temporal), client.pem/.key (takeback-client)"
