# Microsoft Graph lookups of the ActivityFeed.Read grant, sourced by grant-activityfeed-permission.sh and the
# preprovision hook, so that the script that grants and the hook that decides whether to grant again mean the same
# by "granted". The caller sources _az.sh (its `az` strips Windows' \r), calls graph_init once az is there, and
# handles failures.
# shellcheck shell=bash

O365_MGMT_APP_ID="c5393580-f805-4401-95e8-94b7a6ef2fc2"   # "Office 365 Management APIs"
ROLE_VALUE="ActivityFeed.Read"
GRAPH=""

# GRAPH: Microsoft Graph of the cloud the Azure CLI is signed in to (graph.microsoft.us in US Government,
# microsoftgraph.chinacloudapi.cn in China); `az rest` gets no token for the public cloud's Graph there.
graph_init() {
  [[ -z "${GRAPH}" ]] || return 0
  local root
  root=$(az cloud show --query endpoints.microsoftGraphResourceId -o tsv 2>/dev/null) || root=""
  GRAPH="${root:-https://graph.microsoft.com/}"
  GRAPH="${GRAPH%/}/v1.0"
}

# The tenant's service principal of Office 365 Management APIs; nothing when the tenant never used the API.
mgmt_sp_lookup() {
  az ad sp list --filter "appId eq '${O365_MGMT_APP_ID}'" --query "[0].id" -o tsv
}

# The id of ActivityFeed.Read on service principal $1: the app role given to applications, not to users.
activityfeed_role_lookup() {
  az ad sp show --id "$1" \
    --query "appRoles[?value=='${ROLE_VALUE}' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv
}

# The id of principal $1's assignment of app role $3 of service principal $2; nothing when it has none.
assignment_lookup() {
  graph_init
  az rest --method GET --url "${GRAPH}/servicePrincipals/$1/appRoleAssignments" \
    --query "value[?appRoleId=='$3' && resourceId=='$2'].id | [0]" -o tsv
}
