#!/usr/bin/env bash
# Azurite, the storage emulator, for `func start` against local.settings.json (UseDevelopmentStorage=true):
# in the foreground on the default ports 10000 (blob), 10001 (queue) and 10002 (table), data in .azurite/.
# Ctrl-C stops it. Ports and folder: AZURITE_BLOB_PORT, AZURITE_QUEUE_PORT, AZURITE_TABLE_PORT, AZURITE_LOCATION.
# The flags are the ones the tests use: the Azure SDKs here speak newer storage API versions than Azurite
# announces (--skipApiVersionCheck), and --loose accepts headers Azurite does not implement.
SKIP_CHECKOV=1
source "$(dirname "$0")/_bootstrap.sh"
location="${AZURITE_LOCATION:-$ROOT/.azurite}"
mkdir -p "$location"
say "Azurite on 127.0.0.1: blob ${AZURITE_BLOB_PORT:-10000}, queue ${AZURITE_QUEUE_PORT:-10001}, table ${AZURITE_TABLE_PORT:-10002}; data in $location (Ctrl-C stops it)"
exec "$ROOT/node_modules/.bin/azurite" --silent --skipApiVersionCheck --loose --disableProductStyleUrl --disableTelemetry \
  --location "$location" \
  --blobHost 127.0.0.1 --blobPort "${AZURITE_BLOB_PORT:-10000}" \
  --queueHost 127.0.0.1 --queuePort "${AZURITE_QUEUE_PORT:-10001}" \
  --tableHost 127.0.0.1 --tablePort "${AZURITE_TABLE_PORT:-10002}"
