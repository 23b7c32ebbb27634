// A new Log Analytics workspace with Microsoft Sentinel onboarded (a trial), for deployments that ask for one
// explicitly (createSentinelWorkspace). The normal case is an existing Sentinel workspace.
param workspaceName string
param location string
param tags object = {}
@minValue(30)
@maxValue(730)
@description('Workspace retention in days: PerGB2018 needs 30 or more; Sentinel includes 90 at no extra cost.')
param retentionInDays int = 90

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource onboarding 'Microsoft.SecurityInsights/onboardingStates@2025-09-01' = {
  name: 'default'
  scope: workspace
  properties: {}
}

output id string = workspace.id
