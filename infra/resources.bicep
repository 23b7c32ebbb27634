// Everything of the connector inside one resource group. Deployable on its own:
//   az deployment group create -g <rg> -f infra/resources.bicep -p environmentName=<name> ...
targetScope = 'resourceGroup'

param environmentName string
param location string = resourceGroup().location
param tags object = {}

@description('Object id of the deployer; empty = no data-plane roles for the deployer.')
param principalId string = ''
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

param o365TenantId string = tenant().tenantId
@allowed([
  'managed_identity'
  'secret'
  'certificate'
])
param o365AuthMode string = 'managed_identity'
param grantActivityFeedPermission bool = false
param o365ClientId string = ''
@secure()
param o365ClientSecret string = ''
param o365CertificateName string = 'o365-client-certificate'
@secure()
param o365ClientCertificatePassword string = ''
@allowed([
  'Commercial'
  'GCC'
  'GCCHigh'
  'DoD'
])
param o365Cloud string = 'Commercial'
param o365ContentTypes string = 'Audit.General'
param o365PublisherId string = ''
param ingestAllAuditRecords bool = false
@allowed([
  'Analytics'
  'Basic'
])
param auditTablePlan string = 'Analytics'
param initialLookback string = '24h'
param pollSchedule string = '0 */5 * * * *'

@minLength(3)
@maxLength(56)
@description('Name of the content queue (CONTENT_QUEUE): lowercase letters, digits and single hyphens; the poison queue adds -poison.')
param contentQueue string = 'irm-content'
param alertCategories string = 'InsiderRiskManagement'
param listingOverlap string = '1h'
param pollTimeBudget string = '4m'

@minValue(1)
@maxValue(60000)
@description('Requests per minute the connector allows itself against the Management API: one budget for every instance, per tenant (O365_MAX_REQUESTS_PER_MINUTE).')
param maxRequestsPerMinute int = 1000

@description('Timeout of one call to Entra ID, the Management API, Storage or Logs Ingestion.')
param httpTimeout string = '60s'

@minLength(1)
@maxLength(30)
@description('Prefix of the connector state tables in the storage account (STATE_TABLE_PREFIX): letters and digits, starting with a letter.')
param stateTablePrefix string = 'irm'

@minValue(8)
@maxValue(90)
@description('Days the dedupe keys are kept (the API keeps content 7 days; DEDUPE_RETENTION_DAYS).')
param dedupeRetentionDays int = 10

param sentinelWorkspaceResourceId string = ''
param sentinelWorkspaceName string = ''
param sentinelWorkspaceResourceGroup string = ''
param sentinelWorkspaceSubscriptionId string = ''
param createSentinelWorkspace bool = false
@minValue(30)
@maxValue(730)
param newWorkspaceRetentionInDays int = 90
@minValue(4)
@maxValue(730)
param tableRetentionInDays int = 90
@minValue(4)
@maxValue(730)
param alertsTableRetentionInDays int = 730
param deploySentinelContent bool = true
param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048
param keyVaultPurgeProtection bool = false
@allowed([
  'default'
  'recover'
])
param keyVaultCreateMode string = 'default'
@secure()
@description('App settings added to, or replacing, those below (main.bicep).')
param extraAppSettings object = {}

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))

// The output tables, the DCR streams and the columns: one file, shared with the Python connector.
var outputColumns = loadJsonContent('../irm_connector/columns.json')

// Which Sentinel workspace: an existing one (resource id, or name + resource group), or a new one here when asked
// for explicitly. With neither the deployment stops: ARM reports a missing resource group by its name, and these
// names say what to set (the azd preprovision hook says it before anything is deployed).
var useWorkspaceId = !empty(sentinelWorkspaceResourceId)
var useWorkspaceName = !useWorkspaceId && !empty(sentinelWorkspaceName)
var createWorkspace = !useWorkspaceId && !useWorkspaceName && createSentinelWorkspace
var wsSubscriptionId = useWorkspaceId ? split(sentinelWorkspaceResourceId, '/')[2] : (empty(sentinelWorkspaceSubscriptionId) ? subscription().subscriptionId : sentinelWorkspaceSubscriptionId)
var wsResourceGroupForName = empty(sentinelWorkspaceResourceGroup) ? 'missing-sentinelWorkspaceResourceGroup-next-to-sentinelWorkspaceName' : sentinelWorkspaceResourceGroup
var wsResourceGroup = useWorkspaceId ? split(sentinelWorkspaceResourceId, '/')[4] : (useWorkspaceName ? wsResourceGroupForName : (createWorkspace ? resourceGroup().name : 'no-workspace-set-sentinelWorkspaceResourceId-or-createSentinelWorkspace'))
var wsName = useWorkspaceId ? split(sentinelWorkspaceResourceId, '/')[8] : (useWorkspaceName ? sentinelWorkspaceName : 'log-sentinel-${resourceToken}')

// Entra ID writes a tenant id in several forms ({braces}, urn:uuid:, bare hex, any case), which the connector reads
// alike; its health rows carry the one form, which the silent-connector rule and the grant's tenant check compare
// with. Here, not in main.bicep, since this file is deployed by itself too. Padded to 32 before it is cut, so that
// neither branch can fail on a value that is no GUID (the connector's settings check names that one).
var tenantHex = replace(replace(replace(replace(replace(toLower(trim(o365TenantId)), 'urn:', ''), 'uuid:', ''), '{', ''), '}', ''), '-', '')
var tenantDigits = padLeft(take(tenantHex, 32), 32, '0')
var tenantGuid = '${substring(tenantDigits, 0, 8)}-${substring(tenantDigits, 8, 4)}-${substring(tenantDigits, 12, 4)}-${substring(tenantDigits, 16, 4)}-${substring(tenantDigits, 20, 12)}'
var o365Tenant = length(tenantHex) == 32 ? tenantGuid : o365TenantId

// A managed identity cannot get tokens for another tenant, so the grant only makes sense in its own tenant.
var grantInDeployment = o365AuthMode == 'managed_identity' && grantActivityFeedPermission && toLower(o365Tenant) == toLower(tenant().tenantId)

resource uami 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-irm-${resourceToken}'
  location: location
  tags: tags
}

// Before the Function App exists, so the identity's first token already carries the role: managed identity
// tokens are cached for up to 24 hours, and a token issued before the grant keeps being refused (AF10001).
// After storage, Key Vault and monitoring only to give Entra ID the minutes it needs to replicate the new identity:
// a grant right after the identity is created can fail with "Not a valid reference update"
// (microsoftgraph/msgraph-bicep-types#193).
module activityFeedGrant 'modules/graph/activityfeed-grant.bicep' = if (grantInDeployment) {
  name: 'irm-activityfeed-grant'
  params: {
    principalId: uami.properties.principalId
  }
  dependsOn: [
    storage
    keyVault
    monitoring
  ]
}

module storage 'modules/storage.bicep' = {
  name: 'irm-storage'
  params: {
    name: 'stirm${resourceToken}'
    location: location
    tags: tags
    principalId: uami.properties.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    contentQueue: contentQueue
    deploymentContainerName: 'app-package-${resourceToken}'
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'irm-monitoring'
  params: {
    workspaceName: 'log-irm-${resourceToken}'
    appInsightsName: 'appi-irm-${resourceToken}'
    location: location
    tags: tags
    principalId: uami.properties.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'irm-keyvault'
  params: {
    name: 'kv-irm-${resourceToken}'
    location: location
    tags: tags
    principalId: uami.properties.principalId
    // The deployer stores a secret or a certificate there; with the managed identity there is none to store.
    deployerPrincipalId: o365AuthMode == 'managed_identity' ? '' : principalId
    deployerPrincipalType: principalType
    deployerStores: o365AuthMode == 'certificate' ? 'certificate' : 'secret'
    enablePurgeProtection: keyVaultPurgeProtection
    createMode: keyVaultCreateMode
    clientSecret: o365ClientSecret
    certificatePassword: o365ClientCertificatePassword
  }
}

module newWorkspace 'modules/sentinel-new-workspace.bicep' = if (createWorkspace) {
  name: 'irm-sentinel-new-workspace'
  scope: resourceGroup(wsSubscriptionId, wsResourceGroup)
  params: {
    workspaceName: wsName
    location: location
    tags: tags
    retentionInDays: newWorkspaceRetentionInDays
  }
}

// The deployments in the workspace's resource group carry the connector's token: several connectors (one per
// Microsoft 365 tenant) may feed one workspace, and ARM refuses a deployment whose name is still running there.
// The workspace's region, read in a deployment of its own: a resource needs its location when the deployment
// starts, and the region of an existing workspace is only known once it has been read (Bicep BCP120).
module workspaceInfo 'modules/workspace-info.bicep' = {
  name: 'irm-sentinel-workspace-info-${resourceToken}'
  scope: resourceGroup(wsSubscriptionId, wsResourceGroup)
  params: {
    workspaceName: wsName
  }
  dependsOn: [
    newWorkspace
  ]
}

module sentinelWorkspace 'modules/sentinel-workspace.bicep' = {
  name: 'irm-sentinel-workspace-${resourceToken}'
  scope: resourceGroup(wsSubscriptionId, wsResourceGroup)
  params: {
    workspaceName: wsName
    location: workspaceInfo.outputs.location
    tags: tags
    dcrName: 'dcr-irm-${resourceToken}'
    outputColumns: outputColumns
    tableRetentionInDays: tableRetentionInDays
    alertsTableRetentionInDays: alertsTableRetentionInDays
    auditTablePlan: auditTablePlan
    principalId: uami.properties.principalId
  }
}

// After the tables and the DCR: Sentinel checks a rule's query when the rule is created.
module sentinelContent 'modules/sentinel-content.bicep' = if (deploySentinelContent) {
  name: 'irm-sentinel-content-${resourceToken}'
  scope: resourceGroup(wsSubscriptionId, wsResourceGroup)
  params: {
    workspaceName: wsName
    location: workspaceInfo.outputs.location
    o365TenantId: o365Tenant
  }
  dependsOn: [
    sentinelWorkspace
  ]
}

var vaultUri = keyVault.outputs.vaultUri
// The workspace is in the cloud this deploys to; its Logs Ingestion tokens and sign-ins depend on it (AZURE_CLOUD).
var azureCloud = environment().name == 'AzureUSGovernment' ? 'AzureUSGovernment' : (environment().name == 'AzureChinaCloud' ? 'AzureChina' : 'AzurePublic')
var authSettings = o365AuthMode == 'secret' ? {
  O365_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${keyVault.outputs.clientSecretName})'
} : (o365AuthMode == 'certificate' ? {
  O365_CLIENT_CERTIFICATE: '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${o365CertificateName})'
  O365_CLIENT_CERTIFICATE_PASSWORD: empty(o365ClientCertificatePassword) ? '' : '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${keyVault.outputs.certificatePasswordName})'
} : {})

module functionApp 'modules/functionapp.bicep' = {
  name: 'irm-functionapp'
  params: {
    name: 'func-irm-${resourceToken}'
    planName: 'plan-irm-${resourceToken}'
    location: location
    tags: union(tags, {
      'azd-service-name': 'connector'
    })
    identityId: uami.id
    identityClientId: uami.properties.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    appSettings: union({
      AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
      AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
      AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
      AzureWebJobsStorage__credential: 'managedidentity'
      AzureWebJobsStorage__clientId: uami.properties.clientId
      AZURE_CLIENT_ID: uami.properties.clientId
      APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${uami.properties.clientId};Authorization=AAD'
      // The Python worker streams its OpenTelemetry logs and traces itself (host.json telemetryMode).
      PYTHON_ENABLE_OPENTELEMETRY: 'true'
      O365_TENANT_ID: o365Tenant
      O365_CLIENT_ID: o365AuthMode == 'managed_identity' ? uami.properties.clientId : o365ClientId
      O365_AUTH_MODE: o365AuthMode
      O365_CLOUD: o365Cloud
      O365_CONTENT_TYPES: o365ContentTypes
      O365_PUBLISHER_ID: empty(o365PublisherId) ? o365Tenant : o365PublisherId
      INITIAL_LOOKBACK: initialLookback
      POLL_SCHEDULE: pollSchedule
      CONTENT_QUEUE: contentQueue
      ALERT_CATEGORIES: alertCategories
      LOGS_INGESTION_ENDPOINT: sentinelWorkspace.outputs.logsIngestionEndpoint
      LOGS_DCR_IMMUTABLE_ID: sentinelWorkspace.outputs.dcrImmutableId
      LOGS_ALERTS_STREAM: outputColumns.streams.alerts.stream
      LOGS_AUDIT_STREAM: ingestAllAuditRecords ? outputColumns.streams.audit.stream : ''
      LOGS_HEALTH_STREAM: outputColumns.streams.health.stream
      LISTING_OVERLAP: listingOverlap
      POLL_TIME_BUDGET: pollTimeBudget
      O365_MAX_REQUESTS_PER_MINUTE: string(maxRequestsPerMinute)
      HTTP_TIMEOUT: httpTimeout
      STATE_TABLE_PREFIX: stateTablePrefix
      DEDUPE_RETENTION_DAYS: string(dedupeRetentionDays)
      AZURE_CLOUD: azureCloud
      // Blob bodies in flight per worker: each costs about 3 times its size at peak (bench/: 12 x 25 MB at once).
      MAX_BLOB_MB_IN_FLIGHT: string(instanceMemoryMB / 16)
    }, authSettings, extraAppSettings)
  }
  dependsOn: [
    activityFeedGrant
  ]
}

output functionAppName string = functionApp.outputs.name
output functionAppId string = functionApp.outputs.id
output uamiPrincipalId string = uami.properties.principalId
output uamiClientId string = uami.properties.clientId
output dcrId string = sentinelWorkspace.outputs.dcrId
output logsIngestionEndpoint string = sentinelWorkspace.outputs.logsIngestionEndpoint
output workspaceId string = workspaceInfo.outputs.id
output keyVaultName string = keyVault.outputs.name
output storageAccountName string = storage.outputs.name
output activityFeedGranted bool = grantInDeployment
