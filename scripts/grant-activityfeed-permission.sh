#!/usr/bin/env bash
# Grants the IRM connector read access to the Office 365 Management Activity API (ActivityFeed.Read).
# Needs an Entra ID role that may grant application permissions (Privileged Role Administrator or
# Global Administrator) and the Azure CLI logged in to the Microsoft 365 tenant
# (`az login --tenant ... --allow-no-subscriptions`: that tenant may have no Azure subscription).
# Running it again changes nothing, but in secret mode, where each run adds a new client secret (one year) to the
# app registration: earlier ones stay valid until they expire, or until removed in the portal.
set -euo pipefail

# O365_MGMT_APP_ID, ROLE_VALUE, GRAPH and the lookups the preprovision hook shares.
# shellcheck source=scripts/_graph.sh
source "$(dirname "$0")/_graph.sh"

usage() {
  cat <<'USAGE'
Usage:
  grant-activityfeed-permission.sh managed_identity --principal-id <UAMI principal (object) id>
  grant-activityfeed-permission.sh secret [--app-name <name>] [--years <n>] [--key-vault <KEY_VAULT_NAME>]
  grant-activityfeed-permission.sh certificate --cert-file <public certificate, PEM> [--app-name <name>]
  grant-activityfeed-permission.sh consent --app-id <O365_CLIENT_ID>
  grant-activityfeed-permission.sh --help

managed_identity  Assigns the ActivityFeed.Read app role of "Office 365 Management APIs" to the
                  connector's user-assigned managed identity (azd output UAMI_PRINCIPAL_ID) via
                  Microsoft Graph appRoleAssignments. Nothing else to consent. (azd up can make this
                  grant itself, before the Function App exists: GRANT_ACTIVITYFEED_PERMISSION=true.)
secret            Creates (or reuses) an app registration "<app-name>" (default irm-connector) with the
                  ActivityFeed.Read application permission, grants admin consent, and creates a client
                  secret. With --key-vault the secret goes straight into that vault (never printed);
                  without it the secret goes to a file only you can read (never to the terminal): store it
                  with scripts/store-client-secret.sh, as the script says, and delete the file.
certificate       The same app registration, with admin consent, and the certificate of --cert-file (its
                  public part only: the script refuses a file with a private key) as its credential instead of a
                  secret. For a Microsoft 365 tenant other than the Azure subscription's: run it signed in
                  to the Microsoft 365 tenant.
consent           An app registration you already have (--app-id, the connector's O365_CLIENT_ID) gets the
                  ActivityFeed.Read application permission and admin consent; no credential is made.

Environment: AZD users can run `azd env get-values` first; UAMI_PRINCIPAL_ID is read when
--principal-id is not given.
USAGE
}

die() { echo "error: $*" >&2; exit 1; }
# az (the wrapper that strips Windows' \r) and REFRESH_API.
# shellcheck source=scripts/_az.sh
source "$(dirname "$0")/_az.sh"

need_az() {
  az_installed || die "the Azure CLI (az) is required"
  az account show >/dev/null 2>&1 || die "run 'az login --tenant <Microsoft 365 tenant> --allow-no-subscriptions' first"
  graph_init
}

mgmt_sp() {
  local sp_id
  sp_id=$(mgmt_sp_lookup)
  if [[ -z "${sp_id}" ]]; then
    sp_id=$(az ad sp create --id "${O365_MGMT_APP_ID}" --query id -o tsv)
  fi
  echo "${sp_id}"
}

role_id() {
  local sp_id=$1 rid
  rid=$(activityfeed_role_lookup "${sp_id}")
  [[ -n "${rid}" ]] || die "${ROLE_VALUE} app role not found on the Office 365 Management APIs service principal"
  echo "${rid}"
}

# App role $3 of service principal $2 assigned to principal $1, unless it holds it: for an application permission
# this is what admin consent is. Prints "granted" or "already" (with the assignment's id).
assign_role() {
  local principal_id=$1 sp_id=$2 rid=$3 existing
  existing=$(assignment_lookup "${principal_id}" "${sp_id}" "${rid}") || return 1
  if [[ -n "${existing}" ]]; then
    echo "already ${existing}"
    return
  fi
  graph_init
  az rest --method POST \
    --url "${GRAPH}/servicePrincipals/${principal_id}/appRoleAssignments" \
    --headers "Content-Type=application/json" \
    --body "{\"principalId\":\"${principal_id}\",\"resourceId\":\"${sp_id}\",\"appRoleId\":\"${rid}\"}" \
    --output none >&2 || return 1
  echo "granted"
}

grant_managed_identity() {
  local principal_id=${1:-${UAMI_PRINCIPAL_ID:-}}
  [[ -n "${principal_id}" ]] || die "--principal-id is required (azd env get-values: UAMI_PRINCIPAL_ID)"
  need_az
  local sp_id rid outcome
  sp_id=$(mgmt_sp)
  rid=$(role_id "${sp_id}")
  outcome=$(assign_role "${principal_id}" "${sp_id}" "${rid}") \
    || die "the assignment of ${ROLE_VALUE} to ${principal_id} failed (see above); it needs Privileged Role Administrator or Global Administrator"
  if [[ "${outcome}" == already* ]]; then
    echo "ok: ${principal_id} already has ${ROLE_VALUE} (assignment ${outcome#already })"
    return
  fi
  echo "granted: ${ROLE_VALUE} to ${principal_id}."
  echo "If the Function App already asked for a token, that token lacks the role and Azure caches managed identity"
  echo "tokens for up to 24 hours (restarting the app does not clear it): AF10001 errors can go on until it expires."
}

# The app registration "$1" with ActivityFeed.Read and admin consent (created or reused); prints its app id.
ensure_app() {
  local app_name=$1
  local app_id
  # By exact name: --display-name matches every name that starts with it ("irm-connector-test" too).
  app_id=$(az ad app list --filter "displayName eq '${app_name//\'/\'\'}'" --query "[0].appId" -o tsv)
  if [[ -z "${app_id}" ]]; then
    app_id=$(az ad app create --display-name "${app_name}" --sign-in-audience AzureADMyOrg --query appId -o tsv)
    echo "created app registration ${app_name} (${app_id})" >&2
  else
    echo "reusing app registration ${app_name} (${app_id})" >&2
  fi
  consent_app "${app_id}" "${app_name}"
  echo "${app_id}"
}

# ActivityFeed.Read and admin consent for the app registration "$1" (named "$2" in messages).
consent_app() {
  local app_id=$1 app_name=$2
  local sp_id rid
  sp_id=$(mgmt_sp)
  rid=$(role_id "${sp_id}")
  if ! az ad app permission list --id "${app_id}" \
      --query "[?resourceAppId=='${O365_MGMT_APP_ID}'].resourceAccess[] | [?id=='${rid}']" -o tsv | grep -q .; then
    az ad app permission add --id "${app_id}" --api "${O365_MGMT_APP_ID}" --api-permissions "${rid}=Role" --output none
  fi
  local app_sp
  app_sp=$(az ad sp show --id "${app_id}" --query id -o tsv 2>/dev/null) || app_sp=""
  [[ -n "${app_sp}" ]] || app_sp=$(az ad sp create --id "${app_id}" --query id -o tsv)
  # Admin consent to an application permission is this assignment on the app's service principal (needs Privileged
  # Role Administrator / Global Administrator). Not `az ad app permission admin-consent`: it calls a portal API that
  # the Azure CLI refuses in sovereign clouds.
  assign_role "${app_sp}" "${sp_id}" "${rid}" >/dev/null \
    || die "admin consent failed (see above): grant it in the portal (App registrations > ${app_name} > API permissions > Grant admin consent)"
}

grant_consent() {
  local app_id=$1
  [[ -n "${app_id}" ]] || die "--app-id is required: the app registration's application (client) id, O365_CLIENT_ID"
  need_az
  az ad app show --id "${app_id}" >/dev/null 2>&1 \
    || die "no app registration ${app_id} in this tenant: sign in to the Microsoft 365 tenant (az login --tenant ... --allow-no-subscriptions)"
  consent_app "${app_id}" "${app_id}"
  echo "granted: ${ROLE_VALUE} with admin consent to app registration ${app_id}"
}

grant_secret() {
  local app_name=$1 years=$2 key_vault=$3
  need_az
  local app_id secret
  app_id=$(ensure_app "${app_name}")
  secret=$(az ad app credential reset --id "${app_id}" --append --display-name "irm-connector" \
    --years "${years}" --query password -o tsv)
  echo "O365_CLIENT_ID=${app_id}"
  echo "Then: azd env set O365_AUTH_MODE secret; azd env set O365_CLIENT_ID ${app_id}; azd provision"
  if [[ -n "${key_vault}" ]]; then
    # Several tries: a Key Vault role assigned minutes ago may still be refused. If it is, the secret is
    # kept rather than lost (the app keeps the credential, and another run would add one more).
    if ! printf '%s' "${secret}" | "$(dirname "$0")/store-client-secret.sh" --vault "${key_vault}" --attempts 10; then
      keep_secret "${secret}" "${key_vault}" "It could not be stored in ${key_vault}."
    fi
  else
    keep_secret "${secret}" "<KEY_VAULT_NAME>" "Store it in Key Vault."
  fi
}

# A new client secret goes into a file only its owner can read, never to the terminal: printed, it stayed in
# scrollback, a CI log or a `| tee` file.
keep_secret() {
  local secret=$1 vault=$2 why=$3 file
  file=$(umask 077 && mktemp "${TMPDIR:-/tmp}/o365-client-secret.XXXXXX")
  printf '%s' "${secret}" > "${file}"
  echo "${why} The new client secret is in ${file} (readable by you alone):"
  echo "  scripts/store-client-secret.sh --vault ${vault} < ${file} && rm ${file}"
}

grant_certificate() {
  local app_name=$1 cert_file=$2
  [[ -n "${cert_file}" ]] || die "--cert-file is required: the certificate's public part, PEM"
  [[ -f "${cert_file}" ]] || die "--cert-file ${cert_file}: no such file"
  # A private key has no business in an app registration: refuse it rather than upload it.
  ! grep -q "PRIVATE KEY" "${cert_file}" || die "--cert-file ${cert_file} holds a private key: pass the public certificate only"
  need_az
  local app_id
  app_id=$(ensure_app "${app_name}")
  az ad app credential reset --id "${app_id}" --append --cert "@${cert_file}" --output none
  echo "O365_CLIENT_ID=${app_id}"
  echo "Then: azd env set O365_AUTH_MODE certificate; azd env set O365_CLIENT_ID ${app_id}; azd provision"
}

main() {
  [[ $# -ge 1 ]] || { usage; exit 2; }
  local mode=$1; shift
  case "${mode}" in
    -h|--help) usage ;;
    managed_identity)
      local principal_id=""
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --principal-id) principal_id=${2:?}; shift 2 ;;
          -h|--help) usage; exit 0 ;;
          *) die "unknown argument $1" ;;
        esac
      done
      grant_managed_identity "${principal_id}" ;;
    secret)
      local app_name="irm-connector" years=1 key_vault=""
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --app-name) app_name=${2:?}; shift 2 ;;
          --years) years=${2:?}; shift 2 ;;
          --key-vault) key_vault=${2:?}; shift 2 ;;
          -h|--help) usage; exit 0 ;;
          *) die "unknown argument $1" ;;
        esac
      done
      grant_secret "${app_name}" "${years}" "${key_vault}" ;;
    certificate)
      local app_name="irm-connector" cert_file=""
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --app-name) app_name=${2:?}; shift 2 ;;
          --cert-file) cert_file=${2:?}; shift 2 ;;
          -h|--help) usage; exit 0 ;;
          *) die "unknown argument $1" ;;
        esac
      done
      grant_certificate "${app_name}" "${cert_file}" ;;
    consent)
      local app_id=""
      while [[ $# -gt 0 ]]; do
        case "$1" in
          --app-id) app_id=${2:?}; shift 2 ;;
          -h|--help) usage; exit 0 ;;
          *) die "unknown argument $1" ;;
        esac
      done
      grant_consent "${app_id}" ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"
