// Reads an existing workspace and hands its region and id to the modules that need them as parameters: a
// resource's location must be known when its deployment starts, and an existing resource's region is not
// (Bicep BCP120), so it crosses a module boundary as an output.
param workspaceName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' existing = {
  name: workspaceName
}

output location string = workspace.location
output id string = workspace.id
