# Microsoft Graph lookups of the ActivityFeed.Read grant, sourced by grant-activityfeed-permission.sh and the
# preprovision hook, so that the script that grants and the hook that decides whether to grant again mean the same
# by "granted". The caller sources _az.sh (its `az` strips Windows' \r) and handles failures.
# shellcheck shell=bash

O365_MGMT_APP_ID="c5393580-f805-4401-95e8-94b7a6ef2fc2"   # "Office 365 Management APIs"
ROLE_VALUE="ActivityFeed.Read"
GRAPH="https://graph.microsoft.com/v1.0"

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
  az rest --method GET --url "${GRAPH}/servicePrincipals/$1/appRoleAssignments" \
    --query "value[?appRoleId=='$3' && resourceId=='$2'].id | [0]" -o tsv
}
