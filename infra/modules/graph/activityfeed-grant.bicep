// Grants a service principal (the connector's managed identity) the ActivityFeed.Read application permission of
// "Office 365 Management APIs", with the Microsoft Graph Bicep extension (v1.0 types 1.0.0, Bicep 0.36.1 or newer).
// The deployer needs a directory role that may grant application permissions: Privileged Role Administrator or
// Global Administrator (the Graph extension acts with the deployer's own permissions).
//
// The extension is declared in this folder's bicepconfig.json (implicitExtensions) rather than with an
// `extension microsoftGraphV1` statement: Bicep treats both the same, and this file stays readable by the Bicep
// parser of checkov and bicep-typecheck (pycep), which does not know the `extension` keyword.

@description('Object (principal) id of the service principal that gets ActivityFeed.Read.')
param principalId string

// "Office 365 Management APIs", the same application id in every tenant.
var o365ManagementApiAppId = 'c5393580-f805-4401-95e8-94b7a6ef2fc2'

resource o365ManagementApi 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: o365ManagementApiAppId
}

resource activityFeedRead 'Microsoft.Graph/appRoleAssignedTo@v1.0' = {
  // The role is looked up by its value, so no role id is copied here by hand.
  appRoleId: filter(o365ManagementApi.appRoles, role => role.value == 'ActivityFeed.Read')[0].id
  principalId: principalId
  resourceId: o365ManagementApi.id
}

output appRoleAssignmentId string = activityFeedRead.id
