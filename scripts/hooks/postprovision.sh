#!/usr/bin/env bash
# azd postprovision hook (azure.yaml): does what can be automated after the infrastructure exists, and prints the
# admin steps that cannot be: consent, the Insider Risk Management export switch, and how to verify.
# azd passes the environment's values and the deployment outputs (KEY_VAULT_NAME, UAMI_PRINCIPAL_ID, ...) as
# environment variables. Nothing here fails the provisioning: a step that cannot run is printed for a person.
set -euo pipefail
cd "$(dirname "$0")/../.."   # newer azd starts hooks in the script's folder; the paths below are from the root

say() { printf '%s\n' "$*"; }
step() { printf '\n== %s\n' "$*"; }
# az (the wrapper that strips Windows' \r) and REFRESH_API.
# shellcheck source=scripts/_az.sh
source scripts/_az.sh

az_ready() { az_installed && az account show >/dev/null 2>&1; }

mode=${O365_AUTH_MODE:-managed_identity}
vault=${KEY_VAULT_NAME:-}
pending=()

grant_managed_identity() {
  step "ActivityFeed.Read for the connector identity (${UAMI_PRINCIPAL_ID:-?})"
  if [[ "${ACTIVITYFEED_GRANTED_IN_DEPLOYMENT:-false}" == "true" ]]; then
    say "Granted by the deployment, before the Function App started: nothing to wait for."
    # The assignment stays when the parameter is off (deployments only add). Later runs then need no directory
    # role, and do not ask Entra ID to create an assignment that already exists.
    azd env set GRANT_ACTIVITYFEED_PERMISSION false \
      || say "Could not set GRANT_ACTIVITYFEED_PERMISSION to false; set it yourself: azd env set GRANT_ACTIVITYFEED_PERMISSION false"
    return
  fi
  # The script says "ok: ... already has" when an earlier run granted it, and the 24-hour token wait only with a
  # grant it makes now.
  if az_ready && scripts/grant-activityfeed-permission.sh managed_identity --principal-id "${UAMI_PRINCIPAL_ID:-}"; then
    return
  fi
  pending+=("An Entra ID admin (Privileged Role Administrator or Global Administrator) grants ActivityFeed.Read:
     scripts/grant-activityfeed-permission.sh managed_identity --principal-id ${UAMI_PRINCIPAL_ID:-<UAMI_PRINCIPAL_ID>}
   The connector's first token may predate it: AF10001 errors can go on for up to 24 hours after the grant.")
}

store_secret() {
  step "Client secret of app ${O365_CLIENT_ID:-<O365_CLIENT_ID>} in Key Vault ${vault}"
  # The deployment has just written the app's reference to a secret that did not exist yet: App Service would try
  # it again only in 24 hours, so the store asks it to read its references again (--app).
  local store_args=(--vault "${vault}" --attempts 10)
  [[ -z "${FUNCTION_APP_ID:-}" ]] || store_args+=(--app "${FUNCTION_APP_ID}")
  if [[ -n "${O365_CLIENT_SECRET:-}" ]]; then
    # It was put into the azd environment (plain text): move it to Key Vault and clear that copy.
    # Several attempts: the deployer's Key Vault role was assigned by this provisioning and can take minutes to apply.
    local why="the Azure CLI is not signed in"
    if az_ready && why="storing it failed, as the lines above say" \
        && printf '%s' "${O365_CLIENT_SECRET}" | scripts/store-client-secret.sh "${store_args[@]}"; then
      if azd env set O365_CLIENT_SECRET ""; then
        say "Moved into Key Vault; cleared in .azure/${AZURE_ENV_NAME:-<env>}/.env."
      else
        pending+=("The secret is in Key Vault, but still in .azure/${AZURE_ENV_NAME:-<env>}/.env: azd env set O365_CLIENT_SECRET ''")
      fi
      return
    fi
    pending+=("O365_CLIENT_SECRET is still in plain text in .azure/${AZURE_ENV_NAME:-<env>}/.env (${why}):
     az login; scripts/store-client-secret.sh --vault ${vault}; azd env set O365_CLIENT_SECRET ''")
    return
  elif az_ready && az keyvault secret show --vault-name "${vault}" --name o365-client-secret --query id -o tsv >/dev/null 2>&1; then
    say "Present (rotate it with scripts/store-client-secret.sh --vault ${vault})."
    return
  elif az_ready && [[ -t 0 ]]; then
    scripts/store-client-secret.sh "${store_args[@]}" && return
  fi
  pending+=("Store the client secret in Key Vault (it asks for it, no echo): scripts/store-client-secret.sh --vault ${vault}")
}

consent_step() {
  if [[ -n "${O365_CLIENT_ID:-}" ]]; then
    pending+=("The app registration ${O365_CLIENT_ID} needs ActivityFeed.Read with admin consent (Entra ID admin, signed in to
     the Microsoft 365 tenant): scripts/grant-activityfeed-permission.sh consent --app-id ${O365_CLIENT_ID}")
  else
    pending+=("O365_CLIENT_ID is not set: make the app registration (docs/deploy.md, step 1), then
     azd env set O365_CLIENT_ID <its application id>; azd provision")
  fi
}

check_certificate() {
  local name=${O365_CERTIFICATE_NAME:-o365-client-certificate}
  step "Client certificate ${name} in Key Vault ${vault}"
  if az_ready && az keyvault certificate show --vault-name "${vault}" --name "${name}" --query id -o tsv >/dev/null 2>&1; then
    say "Present."
    return
  fi
  pending+=("Import the app registration's certificate: az keyvault certificate import --vault-name ${vault} -n ${name} -f <dir>/cert.pfx [--password @<dir>/pfx-password] (a private directory outside the checkout; @ reads the password from a file, off the command line)
   then have the app read it now (else within 24 hours): az rest --method post --url \"${FUNCTION_APP_ID:-<FUNCTION_APP_ID>}/${REFRESH_API}\"")
}

case "${mode}" in
  managed_identity) grant_managed_identity ;;
  secret)
    store_secret
    consent_step ;;
  certificate)
    check_certificate
    consent_step ;;
  *) say "Unknown O365_AUTH_MODE ${mode}" ;;
esac

# A secret put into the azd environment is moved to Key Vault in secret mode only; in any other mode nothing reads
# it, and it stayed in the plain-text file (and in every hook's environment).
if [[ "${mode}" != "secret" && -n "${O365_CLIENT_SECRET:-}" ]]; then
  step "O365_CLIENT_SECRET in the azd environment"
  if azd env set O365_CLIENT_SECRET ""; then
    say "Not used in ${mode} mode: cleared in .azure/${AZURE_ENV_NAME:-<env>}/.env (plain text); Key Vault keeps none."
  else
    pending+=("O365_CLIENT_SECRET is not used in ${mode} mode, and is in plain text in .azure/${AZURE_ENV_NAME:-<env>}/.env: azd env set O365_CLIENT_SECRET ''")
  fi
fi

pending+=("An Insider Risk Management admin turns on the export: Microsoft Purview portal > Insider risk management >
     Settings > Export alerts > On (off by default; without it no IRM alert reaches the audit feed).")

step "Remaining admin steps"
i=1
for p in "${pending[@]}"; do
  printf '%d. %s\n' "${i}" "${p}"
  i=$((i + 1))
done

step "Waits Microsoft imposes"
say "- Health rows: within minutes of the first poll (every 5 minutes). The connector's Monitoring Metrics"
say "  Publisher role on the data collection rule can take up to 30 minutes to apply; the connector retries."
say "- The first content of a new Management API subscription: up to 12 hours."
say "- IRM alerts: about hourly, 1-3 hours after they are raised."

step "Verify (Sentinel > Logs, workspace ${SENTINEL_WORKSPACE_ID:-<SENTINEL_WORKSPACE_ID>})"
cat <<'KQL'
IRMConnectorHealth_CL
| summarize arg_max(TimeGenerated, *) by O365TenantId, ContentType
| project O365TenantId, ContentType, LastRun = TimeGenerated, LagMinutes = LagSeconds / 60, SubscriptionStatus, Errors, LastError,
    BlobsQueued, QueueDepth, OldestQueuedSeconds, PoisonDepth, IngestionState
KQL
say "Sentinel > Data connectors lists \"Microsoft 365 Insider Risk Management alerts (IRM connector)\", connected once"
say "a health row arrived in the last 30 minutes."
