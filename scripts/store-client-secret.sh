#!/usr/bin/env bash
# Stores the app registration's client secret in the connector's Key Vault (secret o365-client-secret, which the
# Function App's O365_CLIENT_SECRET setting references). The secret is read from standard input, or asked for
# without echo on a terminal, and handed to the Azure CLI in a private temporary file: it never appears on a
# command line (visible to other processes), in shell history or in .azure/<env>/.env.
# Needs the Azure CLI logged in with Key Vault Secrets Officer on the vault (the deployment grants it to the
# deployer when principalId is set, as azd does).
set -euo pipefail

SECRET_NAME="o365-client-secret"

usage() {
  cat <<'USAGE'
Usage:
  store-client-secret.sh --vault <KEY_VAULT_NAME> [--attempts <n>]   # asks for the secret (no echo)
  printf '%s' "$SECRET" | store-client-secret.sh --vault <KEY_VAULT_NAME>
  store-client-secret.sh --help

The vault name is the deployment output KEY_VAULT_NAME (azd env get-value KEY_VAULT_NAME).
--attempts n  tries n times, 30 seconds apart (default 1): a Key Vault role assigned minutes ago can still
              answer 403 (Azure RBAC takes up to about 10 minutes to apply).
USAGE
}

die() { echo "error: $*" >&2; exit 1; }

main() {
  local vault="" attempts=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --vault) vault=${2:?--vault needs a name}; shift 2 ;;
      --attempts) attempts=${2:?--attempts needs a number}; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument $1" ;;
    esac
  done
  [[ -n "${vault}" ]] || { usage >&2; die "--vault is required"; }
  command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"

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
      echo "stored: ${vault}/${SECRET_NAME} (the Function App reads it through its Key Vault reference)"
      return
    fi
    ((attempt < attempts)) || die "could not store the secret in ${vault} (Key Vault Secrets Officer needed)"
    echo "retrying in ${STORE_SECRET_RETRY_SECONDS:-30} s (attempt ${attempt}/${attempts})" >&2
    sleep "${STORE_SECRET_RETRY_SECONDS:-30}"
  done
}

main "$@"
