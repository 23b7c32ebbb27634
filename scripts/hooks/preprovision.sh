#!/usr/bin/env bash
# azd preprovision hook (azure.yaml): stops a deployment that would go wrong before anything is created, and
# decides whether the deployment itself grants the connector identity ActivityFeed.Read.
# azd passes the environment's values (.azure/<env>/.env) as environment variables.
set -euo pipefail
cd "$(dirname "$0")/../.."   # newer azd starts hooks in the script's folder; the paths below are from the root

say() { printf 'preprovision: %s\n' "$*"; }
die() { printf 'preprovision: %s\n' "$*" >&2; exit 1; }
# macOS ships bash 3.2, which has no lower-case expansion.
lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }
# az (the wrapper that strips Windows' \r) and REFRESH_API.
# shellcheck source=scripts/_az.sh
source scripts/_az.sh

# Entra ID directory roles that may grant an application permission to a service principal.
GLOBAL_ADMINISTRATOR=62e90394-69f5-4237-9190-012177145e10
PRIVILEGED_ROLE_ADMINISTRATOR=e8611ab8-c189-46e8-94e1-60213ab1f814
# O365_MGMT_APP_ID and the lookups of the grant that grant-activityfeed-permission.sh makes.
# shellcheck source=scripts/_graph.sh
source scripts/_graph.sh

check_workspace() {
  local id=${SENTINEL_WORKSPACE_RESOURCE_ID:-} create=${CREATE_SENTINEL_WORKSPACE:-false}
  create=$(lower "${create}")
  if [[ -z "${id}" && "${create}" != "true" ]]; then
    die "no Sentinel workspace chosen. Name the existing one:
  azd env set SENTINEL_WORKSPACE_RESOURCE_ID /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.OperationalInsights/workspaces/<name>
or create a new workspace with Microsoft Sentinel (a trial) in the connector's resource group:
  azd env set CREATE_SENTINEL_WORKSPACE true"
  fi
  if [[ -n "${id}" ]]; then
    local pattern='^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.operationalinsights/workspaces/[^/]+$'
    [[ "$(lower "${id}")" =~ ${pattern} ]] \
      || die "SENTINEL_WORKSPACE_RESOURCE_ID is not a Log Analytics workspace resource id: ${id}"
    if [[ "${create}" == "true" ]]; then
      say "SENTINEL_WORKSPACE_RESOURCE_ID is set: that workspace is used and CREATE_SENTINEL_WORKSPACE is ignored."
    fi
  fi
}

check_secret() {
  # The secret belongs in Key Vault only; .azure/<env>/.env is a plain-text file. postprovision moves it.
  if [[ -n "${O365_CLIENT_SECRET:-}" ]]; then
    say "O365_CLIENT_SECRET is in the azd environment (.azure/${AZURE_ENV_NAME:-<env>}/.env, plain text)."
    if [[ "${O365_AUTH_MODE:-managed_identity}" == "secret" ]]; then
      say "It is not passed to the deployment; the postprovision hook moves it into Key Vault and clears it there."
    else
      say "O365_AUTH_MODE is ${O365_AUTH_MODE:-managed_identity}, which does not use it: the postprovision hook clears it."
    fi
  fi
}

# A managed identity gets tokens in its own tenant only: the Management API of another Microsoft 365 tenant can
# never be read with it, however the deployment goes.
check_tenant() {
  local mode=${O365_AUTH_MODE:-managed_identity} wanted=${O365_TENANT_ID:-} azure
  [[ "${mode}" == "managed_identity" && -n "${wanted}" ]] || return 0
  az_installed || return 0
  azure=$(az account show ${AZURE_SUBSCRIPTION_ID:+--subscription "${AZURE_SUBSCRIPTION_ID}"} --query tenantId -o tsv \
    2>/dev/null) || return 0
  # Compared as GUIDs: the connector reads {braces}, urn:uuid: and bare hex alike.
  if [[ -n "${azure}" && "$(guid_hex "${wanted}")" != "$(guid_hex "${azure}")" ]]; then
    die "O365_TENANT_ID is ${wanted}, but the subscription is in tenant ${azure}. O365_AUTH_MODE=managed_identity
reads only the tenant the Function App's identity lives in. For another Microsoft 365 tenant use an app
registration there: docs/deploy.md, \"Microsoft 365 in another tenant\" (azd env set O365_AUTH_MODE certificate,
or secret, and O365_CLIENT_ID)."
  fi
}

# The Bicep deploys to public Azure, whose managed identities sign in at Entra ID's public cloud: GCC High and DoD
# live in Azure Government's, where such an identity gets no token (the connector refuses the pairing at every
# invocation, naming O365_CLOUD).
check_cloud() {
  local mode cloud
  mode=$(lower "${O365_AUTH_MODE:-managed_identity}")
  cloud=$(lower "${O365_CLOUD:-Commercial}")
  [[ "${mode//-/_}" == "managed_identity" && ( "${cloud}" == "gcchigh" || "${cloud}" == "dod" ) ]] || return 0
  die "O365_CLOUD is ${O365_CLOUD}, whose Entra ID is Azure Government's, and this deployment's managed identity is
public Azure's: it gets no token there. Use an app registration of the Microsoft 365 tenant (azd env set
O365_AUTH_MODE certificate, or secret, and O365_CLIENT_ID: docs/deploy.md, \"Microsoft 365 in another tenant\")."
}

# These values become app settings that the connector reads at every invocation: a typo would deploy, and then
# every invocation would fail with a settings error. They are read as irm_connector/setting_forms.py reads them,
# whose lists these are (tests/infra/test_hooks.py holds the two to each other).
CONTENT_TYPES="Audit.AzureActiveDirectory Audit.Exchange Audit.SharePoint Audit.General DLP.All"
ALERT_CATEGORY_NAMES="AccessGovernance DataGovernance DataLossPrevention InsiderRiskManagement MailFlow ThreatManagement
Other"

trim() { local v=$1; v=${v#"${v%%[![:space:]]*}"}; printf '%s' "${v%"${v##*[![:space:]]}"}"; }

# Whether $2, in any case, is one of the names $1.
one_of() {
  local name wanted
  wanted=$(lower "$2")
  for name in $1; do [[ "$(lower "${name}")" == "${wanted}" ]] && return 0; done
  return 1
}

# The hex digits of a GUID in any form Python's uuid reads (Entra ID's {braces}, urn:uuid:, bare hex), lower case.
guid_hex() {
  local hex
  hex=$(lower "$(trim "$1")")
  hex=${hex//urn:/}; hex=${hex//uuid:/}; hex=${hex#\{}; hex=${hex%\}}; hex=${hex//-/}
  printf '%s' "${hex}"
}

# A GUID in any form Python's uuid reads: one problem line, or none.
guid_problem() {
  local name=$1 value hex
  value=$(trim "$2")
  [[ -n "${value}" ]] || return 0
  hex=$(guid_hex "${value}")
  if [[ ! "${hex}" =~ ^[0-9a-f]{32}$ ]]; then
    printf '%s is not a GUID (hex digits in groups of 8-4-4-4-12): %s\n' "${name}" "${value}"
  elif [[ ! "${hex}" =~ [1-9a-f] ]]; then
    printf '%s is the all-zero GUID of the sample settings: put in the real one\n' "${name}"
  fi
}

# The comma-separated names of $2 against the names $3; with $4 = categories, * stands for all, and spaces,
# underscores and hyphens do not count (the portal writes "Insider risk management").
names_problem() {
  local name=$1 value=$2 known=$3 kind=${4:-} entry key named=0 entries shown
  [[ -n "$(trim "${value}")" ]] || return 0   # empty: the connector takes the default
  shown=$(printf '%s' "${known}" | tr -s ' \n' ',' | sed 's/,/, /g')
  IFS=, read -r -a entries <<<"${value}"
  for entry in "${entries[@]}"; do
    entry=$(trim "${entry}")
    [[ -n "${entry}" ]] || continue
    named=1
    [[ "${kind}" == categories && "${entry}" == "*" ]] && continue
    key=${entry}
    [[ "${kind}" == categories ]] && key=${key//[[:space:]_-]/}
    one_of "${known}" "${key}" || printf '%s names "%s", which is not one of: %s\n' "${name}" "${entry}" "${shown}"
  done
  (( named )) || printf '%s names nothing: unset it for the default\n' "${name}"
}

check_app_settings() {
  local problems
  problems=$(
    guid_problem O365_TENANT_ID "${O365_TENANT_ID:-}"
    guid_problem O365_PUBLISHER_ID "${O365_PUBLISHER_ID:-}"
    # In managed_identity mode the deployment sets the identity's own client id and this one is not used.
    [[ "${O365_AUTH_MODE:-managed_identity}" == "managed_identity" ]] || guid_problem O365_CLIENT_ID "${O365_CLIENT_ID:-}"
    names_problem O365_CONTENT_TYPES "${O365_CONTENT_TYPES:-}" "${CONTENT_TYPES}"
    names_problem ALERT_CATEGORIES "${ALERT_CATEGORIES:-}" "${ALERT_CATEGORY_NAMES}" categories
  )
  [[ -z "${problems}" ]] || die "${problems}
Nothing was deployed. Correct it with azd env set <NAME> <value>, or azd env set <NAME> '' for the default."
}

# A removal that did not purge the Key Vault (azd down without --purge, or purge protection on) leaves it
# soft-deleted for up to 90 days, and a new vault of its name is refused meanwhile ("already exists in deleted
# state"): the deployment recovers it instead, with its secrets and certificates. Decided at every provision, since
# recovering a vault that is not deleted fails as well.
decide_key_vault() {
  local mode=default rg="rg-${AZURE_ENV_NAME:-}" deleted name id location
  if az_installed && az account show >/dev/null 2>&1; then
    deleted=$(az keyvault list-deleted ${AZURE_SUBSCRIPTION_ID:+--subscription "${AZURE_SUBSCRIPTION_ID}"} \
      --resource-type vault --query "[].[name, properties.vaultId, properties.location]" -o tsv 2>/dev/null) \
      || deleted=""
    while IFS=$'\t' read -r name id location; do
      [[ -n "${name}" ]] || continue
      if [[ -n "${KEY_VAULT_NAME:-}" ]]; then   # the name an earlier deployment of this environment gave it
        [[ "$(lower "${name}")" == "$(lower "${KEY_VAULT_NAME}")" ]] || continue
      else
        [[ "$(lower "${name}")" == kv-irm-* && "$(lower "${id}")" == *"/resourcegroups/$(lower "${rg}")/"* ]] || continue
      fi
      if [[ -n "${AZURE_LOCATION:-}" && "$(lower "${location}")" != "$(lower "${AZURE_LOCATION}")" ]]; then
        die "the Key Vault ${name} of this environment is soft-deleted in ${location}, and a vault is recovered where
it was, not in AZURE_LOCATION=${AZURE_LOCATION}. Deploy to ${location} again (azd env set AZURE_LOCATION ${location}),
or purge it first (az keyvault purge --name ${name}; refused while purge protection holds it: then deploy a new
environment, azd env new). Nothing was deployed."
      fi
      mode=recover
      say "The Key Vault ${name} of this environment is soft-deleted (an earlier azd down): the deployment recovers"
      say "it, with its secrets and certificates (KEY_VAULT_CREATE_MODE=recover)."
    done <<<"${deleted}"
  fi
  [[ "${KEY_VAULT_CREATE_MODE:-default}" == "${mode}" ]] || azd env set KEY_VAULT_CREATE_MODE "${mode}"
}

deployer_may_grant() {
  az_installed || return 1
  az account show >/dev/null 2>&1 || return 1
  local roles
  graph_init
  # An OData cast on a membership list is an advanced query for Graph: it asks for the header and $count.
  roles=$(az rest --method GET --headers ConsistencyLevel=eventual \
    --url "${GRAPH}/me/transitiveMemberOf/microsoft.graph.directoryRole?\$select=roleTemplateId&\$count=true" \
    --query "value[].roleTemplateId" -o tsv 2>/dev/null) || { ROLES_UNREAD=1; return 1; }
  grep -qiE "^(${GLOBAL_ADMINISTRATOR}|${PRIVILEGED_ROLE_ADMINISTRATOR})$" <<<"${roles}"
}

# The deployment reads the API's service principal as an existing resource when it grants; a tenant that never
# used the Management API has none yet.
ensure_management_api_principal() {
  az ad sp show --id "${O365_MGMT_APP_ID}" --query id -o tsv >/dev/null 2>&1 \
    || az ad sp create --id "${O365_MGMT_APP_ID}" --output none
}

# Whether the identity of an earlier deployment of this environment (UAMI_PRINCIPAL_ID) already holds the role. A
# deployment that failed after its grant leaves GRANT_ACTIVITYFEED_PERMISSION true (the postprovision hook, which
# sets it back, never ran), and Entra ID refuses the same assignment made twice: the retry would fail on the grant.
already_granted() {
  local principal=${UAMI_PRINCIPAL_ID:-} sp role found
  az_installed || return 1
  # azd saves a deployment's outputs only when it succeeds: after a first provision that failed past its grant there
  # is no UAMI_PRINCIPAL_ID yet, but the identity is there, in the resource group main.bicep names.
  [[ -n "${principal}" ]] || principal=$(az identity list --resource-group "rg-${AZURE_ENV_NAME:-}" \
    --query "[?starts_with(name, 'id-irm-')].principalId | [0]" -o tsv 2>/dev/null) || return 1
  [[ -n "${principal}" ]] || return 1
  sp=$(mgmt_sp_lookup 2>/dev/null) && [[ -n "${sp}" ]] || return 1
  role=$(activityfeed_role_lookup "${sp}" 2>/dev/null) && [[ -n "${role}" ]] || return 1
  # A principal gone with an earlier `azd down` is answered 404: not granted.
  found=$(assignment_lookup "${principal}" "${sp}" "${role}" 2>/dev/null) || return 1
  [[ -n "${found}" ]] && GRANTED_TO=${principal}
}

decide_grant() {
  local mode=${O365_AUTH_MODE:-managed_identity}
  [[ "${mode}" == "managed_identity" ]] || return 0
  if [[ "$(lower "${GRANT_ACTIVITYFEED_PERMISSION:-}")" != "false" ]] && already_granted; then
    azd env set GRANT_ACTIVITYFEED_PERMISSION false
    say "The connector identity (${GRANTED_TO}) already holds ActivityFeed.Read: the deployment does not grant it"
    say "again (GRANT_ACTIVITYFEED_PERMISSION=false)."
    return 0
  fi
  if [[ -n "${GRANT_ACTIVITYFEED_PERMISSION:-}" ]]; then
    say "GRANT_ACTIVITYFEED_PERMISSION=${GRANT_ACTIVITYFEED_PERMISSION} (set in the azd environment)."
    if [[ "$(lower "${GRANT_ACTIVITYFEED_PERMISSION}")" == "true" ]]; then
      ensure_management_api_principal
    fi
    return 0
  fi
  if [[ "${AZURE_PRINCIPAL_TYPE:-User}" == "User" ]] && deployer_may_grant; then
    ensure_management_api_principal
    azd env set GRANT_ACTIVITYFEED_PERMISSION true
    say "You hold an Entra ID role that may grant ActivityFeed.Read: the deployment grants it to the connector"
    say "identity before the Function App exists (GRANT_ACTIVITYFEED_PERMISSION=true)."
  else
    azd env set GRANT_ACTIVITYFEED_PERMISSION false
    if [[ -n "${ROLES_UNREAD:-}" ]]; then
      say "The deployment will not grant ActivityFeed.Read: Microsoft Graph did not give the signed-in az user's"
      say "directory roles. The postprovision hook prints the grant command for an admin."
    else
      say "The deployment will not grant ActivityFeed.Read (no Privileged Role Administrator or Global Administrator"
      say "role found for the signed-in az user). The postprovision hook prints the grant command for an admin."
    fi
    say "To have the deployment grant it instead, run azd provision as such an admin with"
    say "  azd env set GRANT_ACTIVITYFEED_PERMISSION true"
  fi
}

check_workspace
check_app_settings
check_tenant
check_cloud
check_secret
decide_key_vault
decide_grant
