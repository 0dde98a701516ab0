#!/bin/sh
# One-shot job (temporalio/admin-tools): register the namespace the API and worker use.
# The frontend may accept connections before it serves requests, so it tries for up to ~2 minutes.
set -eu
namespace=${NAMESPACE:-default}
address=${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS is required}
# mTLS (deploy/compose.temporal-mtls.yml): the same variables as the app's, given to the CLI as flags.
set -- --address "$address"
[ -n "${TEMPORAL_TLS_CA_PATH:-}" ] && set -- "$@" --tls-ca-path "$TEMPORAL_TLS_CA_PATH"
[ -n "${TEMPORAL_TLS_CLIENT_CERT_PATH:-}" ] && set -- "$@" --tls-cert-path "$TEMPORAL_TLS_CLIENT_CERT_PATH"
[ -n "${TEMPORAL_TLS_CLIENT_KEY_PATH:-}" ] && set -- "$@" --tls-key-path "$TEMPORAL_TLS_CLIENT_KEY_PATH"
[ -n "${TEMPORAL_TLS_SERVER_NAME:-}" ] && set -- "$@" --tls-server-name "$TEMPORAL_TLS_SERVER_NAME"
attempt=0
until temporal operator namespace describe --namespace "$namespace" "$@" >/dev/null 2>&1 \
    || temporal operator namespace create --namespace "$namespace" --retention "${NAMESPACE_RETENTION:-30d}" "$@"; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 60 ]; then
        echo "could not register namespace ${namespace} at ${address}" >&2
        exit 1
    fi
    sleep 2
done
echo "namespace ${namespace} is registered at ${address}"
# The search attributes ops filter deals by in the Web UI (workflows/search_attributes.py): the API
# starts deals with them (TAKEBACK_SEARCH_ATTRIBUTES=true). One that exists is refused: then it is listed.
for attribute in DealStatus PartnerId; do
    temporal operator search-attribute create --namespace "$namespace" --name "$attribute" --type Keyword "$@" >/dev/null 2>&1 \
        || temporal operator search-attribute list --namespace "$namespace" "$@" 2>/dev/null | grep -qw "$attribute" \
        || { echo "could not register search attribute ${attribute} in ${namespace}" >&2; exit 1; }
done
echo "search attributes DealStatus and PartnerId are registered in ${namespace}"
