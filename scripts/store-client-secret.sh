#!/usr/bin/env bash
# Stores the app registration's client secret in the connector's Key Vault (secret o365-client-secret, which the
# Function App's O365_CLIENT_SECRET setting references). The secret is read from standard input, or asked for
# without echo on a terminal, and handed to the Azure CLI in a private temporary file: it never appears on a
# command line (visible to other processes), in shell history or in .azure/<env>/.env.
# Needs the Azure CLI logged in with Key Vault Secrets Officer on the vault (the deployment grants it to the
# deployer when principalId is set, as azd does).
# App Service reads a Key Vault reference again only once a day or when the app's settings change (a restart is not
# enough), so a secret stored after the deployment, or replaced, would wait up to 24 hours: with --app the script
# asks App Service to read the app's references again at once.
set -euo pipefail

SECRET_NAME="o365-client-secret"

usage() {
  cat <<'USAGE'
Usage:
  store-client-secret.sh --vault <KEY_VAULT_NAME> [--app <FUNCTION_APP_ID>] [--attempts <n>]   # asks (no echo)
  printf '%s' "$SECRET" | store-client-secret.sh --vault <KEY_VAULT_NAME> [--app <FUNCTION_APP_ID>]
  store-client-secret.sh --help

The vault name is the deployment output KEY_VAULT_NAME (azd env get-value KEY_VAULT_NAME).
--app id      the Function App's resource id (azd env get-value FUNCTION_APP_ID): once the secret is stored,
              App Service reads the app's Key Vault references again now (asked again, as --attempts says,
              until the secret's resolves). Without it the app reads the new secret within 24 hours (a
              restart does not make it read sooner).
--attempts n  tries n times, 30 seconds apart (default 1): a Key Vault role assigned minutes ago can still
              answer 403 (Azure RBAC takes up to about 10 minutes to apply).
USAGE
}

die() { echo "error: $*" >&2; exit 1; }
# az (the wrapper that strips Windows' \r) and REFRESH_API.
# shellcheck source=scripts/_az.sh
source "$(dirname "$0")/_az.sh"

# The API that says how the secret's reference resolved, relative to the app's resource id as REFRESH_API is.
STATUS_API="config/configreferences/appsettings/O365_CLIENT_SECRET?api-version=2022-03-01"

# Asks App Service to read the app's references again until the secret's resolves, as many times as the store was
# allowed: the app's own Key Vault role, assigned by the same provisioning, can take minutes to apply, and a
# reference that failed would otherwise be tried again only a day later.
refresh_references() {
  local app=${1%/} attempts=$2 attempt status=""
  if [[ -z "${app}" ]]; then
    echo "The Function App reads it within 24 hours. To have it read now, run this again with --app <FUNCTION_APP_ID>," >&2
    echo "or: az rest --method post --url \"<FUNCTION_APP_ID>/${REFRESH_API}\"" >&2
    return
  fi
  for ((attempt = 1; ; attempt++)); do
    if az rest --method post --url "${app}/${REFRESH_API}" --output none; then
      status=$(az rest --method get --url "${app}/${STATUS_API}" --query properties.status -o tsv) || status=""
      if [[ "${status}" == Resolved ]]; then
        echo "refreshed: the Function App reads the new secret now"
        return
      fi
    fi
    ((attempt < attempts)) || break
    echo "the Function App's reference to it is ${status:-not confirmed}; asking again in" \
      "${STORE_SECRET_RETRY_SECONDS:-30} s (attempt ${attempt}/${attempts})" >&2
    sleep "${STORE_SECRET_RETRY_SECONDS:-30}"
  done
  # The secret is stored either way: only the wait differs, so this is no failure of the script.
  echo "warning: the Function App's reference to the secret is ${status:-not confirmed} (AccessToKeyVaultDenied: the" >&2
  echo "app's Key Vault Secrets User role is not applied yet). It reads the secret within 24 hours, or at once after:" >&2
  echo "az rest --method post --url \"${app}/${REFRESH_API}\"" >&2
}

main() {
  local vault="" app="" attempts=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --vault) vault=${2:?--vault needs a name}; shift 2 ;;
      --app) app=${2:?--app needs the Function App resource id}; shift 2 ;;
      --attempts) attempts=${2:?--attempts needs a number}; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument $1" ;;
    esac
  done
  [[ -n "${vault}" ]] || { usage >&2; die "--vault is required"; }
  az_installed || die "the Azure CLI (az) is required"

  local secret
  if [[ -t 0 ]]; then
    read -r -s -p "Client secret for ${vault}/${SECRET_NAME}: " secret
    echo >&2
  else
    secret=$(cat)
  fi
  [[ -n "${secret}" ]] || die "empty secret: nothing stored"

  local file
  file=$(mktemp)
  chmod 600 "${file}"
  # Expanded now: the local variable is gone by the time the EXIT trap runs.
  trap "rm -f $(printf '%q' "${file}")" EXIT
  printf '%s' "${secret}" > "${file}"
  local attempt
  for ((attempt = 1; ; attempt++)); do
    if az keyvault secret set --vault-name "${vault}" --name "${SECRET_NAME}" --file "${file}" --encoding utf-8 \
        --output none; then
      rm -f "${file}"  # not kept on disk through the references' refresh, which can take minutes
      echo "stored: ${vault}/${SECRET_NAME} (the Function App reads it through its Key Vault reference)"
      refresh_references "${app}" "${attempts}"
      return
    fi
    ((attempt < attempts)) || die "could not store the secret in ${vault} (Key Vault Secrets Officer needed)"
    echo "retrying in ${STORE_SECRET_RETRY_SECONDS:-30} s (attempt ${attempt}/${attempts})" >&2
    sleep "${STORE_SECRET_RETRY_SECONDS:-30}"
  done
}

main "$@"
