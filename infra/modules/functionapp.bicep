// The connector: a Python 3.11 Function App on Flex Consumption (FC1, Linux) running as a
// user-assigned managed identity. No HTTP triggers; timer + queue only.
param name string
param planName string
param location string
param tags object = {}
@description('Resource id of the user-assigned managed identity.')
param identityId string
@description('Client id of the user-assigned managed identity.')
param identityClientId string
param storageAccountName string
@description('URL of the blob container Flex Consumption deploys the package from.')
param deploymentContainerUrl string
param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048
// Secure: they hold extraAppSettings, which may carry a secret, and a plain parameter is kept in the history.
@secure()
@description('App settings of the connector (its own secrets are Key Vault references).')
param appSettings object

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Zone redundancy is not needed: a poll missed during a zone outage is caught up by the next run from the stored watermark.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Public network access stays on so `azd deploy` and the portal work without a VNet; the app has no HTTP triggers (timer and queue only).
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero per trigger; there is no minimum instance count to set, and a missed poll is caught up by the next run (watermark).
  // checkov:skip=CKV_AZURE_213: Health checks probe an HTTP path; the app has only timer and queue triggers (its health goes to IRMConnectorHealth_CL instead).
  // checkov:skip=CKV_AZURE_17: Client certificates guard HTTP endpoints; there are none.
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: appSettings
  }

  resource ftpPolicy 'basicPublishingCredentialsPolicies' = {
    name: 'ftp'
    properties: {
      allow: false
    }
  }

  resource scmPolicy 'basicPublishingCredentialsPolicies' = {
    name: 'scm'
    properties: {
      allow: false
    }
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
output storageAccountName string = storageAccountName
output identityClientId string = identityClientId
